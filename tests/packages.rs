//! The Debian packages of `make deb` (debug build, built once): lintian
//! clean apart from the overrides the packages ship (each explained there),
//! the unpacked binaries answer `--version`, the unit passes
//! `systemd-analyze verify`, and the executor package goes through install →
//! upgrade → remove → purge in a throwaway root (`dpkg --root`, maintainer
//! scripts run with DPKG_ROOT; nothing is started on this machine): the key
//! and certificate are made once, kept across the upgrade and the removal
//! together with the state directory and an edited configuration, and purged.
//!
//! Needs root (dpkg) and the tools CI installs: make, dpkg-dev, lintian,
//! systemd (systemd-analyze), maven. A missing tool fails the test naming it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const TOOLS: &[(&str, &str)] = &[
    ("make", "make"),
    ("dpkg-deb", "dpkg"),
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("lintian", "lintian"),
    ("systemd-analyze", "systemd"),
    ("mvn", "maven"),
    ("strip", "binutils"),
];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn require_tools() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (tool, package) in TOOLS {
        let found = std::env::split_paths(&path).any(|d| d.join(tool).is_file());
        assert!(
            found,
            "this test needs '{tool}' (Debian package {package}; `make deps` or .ci/run installs it)"
        );
    }
}

/// Runs a command; panics with its output unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{shown}: cannot run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{text}",
        out.status
    );
    text
}

fn version_line(binary: &Path, args: &[&str]) -> String {
    run(Command::new(binary).args(args)).trim().to_string()
}

/// A dpkg database in an empty directory.
fn throwaway_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let admin = root.join("var/lib/dpkg");
    for sub in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(sub)).expect("dpkg admin dir");
    }
    std::fs::write(admin.join("status"), "").expect("dpkg status");
    std::fs::write(admin.join("available"), "").expect("dpkg available");
    root
}

/// `dpkg --root=ROOT` with the maintainer scripts run outside a chroot (the
/// root has no shell) and the runtime dependencies not installed there.
fn dpkg(root: &Path, args: &[&str]) -> String {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--force-confold",
        ])
        .args(["--log", "/dev/null"])
        .args(args))
}

fn installed_version(root: &Path, package: &str) -> String {
    run(Command::new("dpkg-query")
        .arg(format!("--admindir={}/var/lib/dpkg", root.display()))
        .args(["-W", "-f", "${Version} ${db:Status-Status}", package]))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn debian_packages_lint_run_verify_and_survive_upgrade() {
    if !is_root() {
        eprintln!(
            "skipped: debian_packages_lint_run_verify_and_survive_upgrade needs root (dpkg --root)"
        );
        return;
    }
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("deb");
    let version = netbridge_protocol::VERSION;
    run(Command::new("make")
        .current_dir(REPO)
        .args(["-s", "deb", "DEB_PROFILE=dev"])
        .arg(format!("DEB_OUT={}", out.display())));
    let executor_deb = out.join(format!("netbridge-executor_{version}_amd64.deb"));
    let management_deb = out.join(format!("netbridge-management_{version}_amd64.deb"));

    // lintian: nothing but what the packages' overrides explain.
    let lint = Command::new("lintian")
        .args(["--tag-display-limit", "0", "--fail-on", "error,warning"])
        .arg(&executor_deb)
        .arg(&management_deb)
        .output()
        .expect("run lintian");
    let report = String::from_utf8_lossy(&lint.stdout).into_owned();
    let tags: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(
        tags.is_empty() && lint.status.success(),
        "lintian:\n{report}{}",
        String::from_utf8_lossy(&lint.stderr)
    );

    // Unpacked, the binaries run and report the build.
    let unpacked = dir.path().join("unpacked");
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&executor_deb)
        .arg(&unpacked));
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&management_deb)
        .arg(&unpacked));
    let build = netbridge_protocol::build_id();
    assert_eq!(
        version_line(&unpacked.join("usr/bin/netbridge-executor"), &["--version"]),
        format!("netbridge-executor {version}")
    );
    assert_eq!(
        version_line(&unpacked.join("usr/bin/netbridge"), &["--version"]),
        format!("netbridge {version}")
    );
    assert_eq!(
        version_line(
            &unpacked.join("usr/bin/netbridge-entrypoint"),
            &["--version"]
        ),
        format!("netbridge-entrypoint {build}")
    );
    let lib = unpacked.join("usr/lib/x86_64-linux-gnu/jni/libnetbridge.so");
    assert!(lib.is_file(), "libnetbridge.so where Debian's JVM looks");
    assert_eq!(
        std::fs::read_link(unpacked.join("usr/share/cloudstack-management/lib/netbridge.jar"))
            .expect("jar link"),
        PathBuf::from("../../netbridge/netbridge.jar")
    );
    assert!(unpacked.join("usr/share/netbridge/netbridge.jar").is_file());
    // The shipped store settings parse (all commented: the defaults).
    let config = unpacked.join("etc/netbridge/netbridge.toml");
    let state = dir.path().join("cli-state");
    let said = run(Command::new(unpacked.join("usr/bin/netbridge"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .args(["api", "listExtensions"]));
    assert!(said.contains("listextensionsresponse"), "{said}");
    assert!(unpacked
        .join("usr/share/netbridge/grafana-dashboard.json")
        .is_file());
    let control = run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(&executor_deb)
        .arg("Depends"));
    for dep in [
        "iproute2",
        "nftables",
        "dnsmasq-base",
        "haproxy",
        "radvd",
        "libc6",
    ] {
        assert!(control.contains(dep), "Depends lacks {dep}: {control}");
    }

    // The unit, verified by systemd against the unpacked tree (plus the
    // standard targets and /bin/kill it refers to).
    let units = unpacked.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("unit dir");
    for entry in std::fs::read_dir("/lib/systemd/system").expect("host units") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "target") {
            std::fs::copy(&path, units.join(path.file_name().expect("name"))).expect("copy target");
        }
    }
    std::fs::create_dir_all(unpacked.join("bin")).expect("bin");
    std::fs::copy("/bin/kill", unpacked.join("bin/kill")).expect("copy kill");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", unpacked.display()))
        .arg("netbridge-executor.service")
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
    let unit =
        std::fs::read_to_string(unpacked.join("lib/systemd/system/netbridge-executor.service"))
            .expect("unit");
    for line in [
        "NoNewPrivileges=true",
        "StateDirectory=netbridge",
        "LimitNOFILE=65536",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN",
        "KillMode=process",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "unit lacks {line}"
        );
    }

    // Install → upgrade → remove → purge in a throwaway root.
    let upgrade_deb = out.join(format!("netbridge-executor_{version}+upgrade_amd64.deb"));
    let repack = dir.path().join("repack");
    run(Command::new("dpkg-deb")
        .arg("-R")
        .arg(&executor_deb)
        .arg(&repack));
    let control_path = repack.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control_path).expect("control");
    std::fs::write(
        &control_path,
        text.replace(
            &format!("Version: {version}\n"),
            &format!("Version: {version}+upgrade\n"),
        ),
    )
    .expect("control");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&repack)
        .arg(&upgrade_deb));

    let root = throwaway_root(dir.path());
    let said = dpkg(&root, &["-i", executor_deb.to_str().expect("path")]);
    assert_eq!(
        installed_version(&root, "netbridge-executor"),
        format!("{version} installed")
    );
    let key_path = root.join("etc/netbridge/executor.hmac");
    let cert_path = root.join("etc/netbridge/tls/cert.pem");
    let key = std::fs::read_to_string(&key_path).expect("key made on install");
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(key.trim().len(), 64);
    assert_eq!(mode(&root.join("etc/netbridge/tls/key.pem")), 0o600);
    assert_eq!(mode(&root.join("var/lib/netbridge")), 0o700);
    let fingerprint = version_line(
        &root.join("usr/bin/netbridge-executor"),
        &["fingerprint", "--cert", cert_path.to_str().expect("path")],
    );
    assert!(
        said.contains(&format!("executor.fingerprint={fingerprint}")),
        "the fingerprint to pin is printed:\n{said}"
    );
    assert!(
        !said.contains(key.trim()),
        "the key is never printed:\n{said}"
    );
    let cert = std::fs::read(&cert_path).expect("cert");
    // What an operator and the executor leave behind.
    let marker = root.join("var/lib/netbridge/networks/cs-net-42.json");
    std::fs::create_dir_all(marker.parent().expect("parent")).expect("networks dir");
    std::fs::write(&marker, "{}").expect("state file");
    let config = root.join("etc/netbridge/executor.toml");
    let edited = std::fs::read_to_string(&config).expect("config") + "guest_device = \"bond0\"\n";
    std::fs::write(&config, &edited).expect("edit config");

    let said = dpkg(&root, &["-i", upgrade_deb.to_str().expect("path")]);
    assert_eq!(
        installed_version(&root, "netbridge-executor"),
        format!("{version}+upgrade installed")
    );
    assert!(
        !said.contains("new certificate"),
        "an upgrade makes no new certificate:\n{said}"
    );
    assert_eq!(
        std::fs::read_to_string(&key_path).expect("key"),
        key,
        "key kept"
    );
    assert_eq!(
        std::fs::read(&cert_path).expect("cert"),
        cert,
        "certificate kept"
    );
    assert!(marker.is_file(), "state kept across the upgrade");
    assert_eq!(std::fs::read_to_string(&config).expect("config"), edited);

    dpkg(&root, &["-r", "netbridge-executor"]);
    assert!(
        !root.join("usr/bin/netbridge-executor").exists(),
        "binary removed"
    );
    assert_eq!(
        std::fs::read_to_string(&key_path).expect("key"),
        key,
        "key kept on remove"
    );
    assert_eq!(std::fs::read(&cert_path).expect("cert"), cert);
    assert!(marker.is_file(), "state kept on remove");
    assert_eq!(std::fs::read_to_string(&config).expect("config"), edited);

    dpkg(&root, &["-P", "netbridge-executor"]);
    for gone in [&key_path, &cert_path, &marker, &config] {
        assert!(!gone.exists(), "{} purged", gone.display());
    }
}
