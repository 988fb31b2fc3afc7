//! `netbridge api …` end to end: the real binary on a temporary state
//! directory, create → register → updateRegisteredExtension → list, and the
//! errors a user sees for bad input.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

static BIN: std::sync::LazyLock<std::path::PathBuf> =
    std::sync::LazyLock::new(|| netbridge_testbed::workspace_bin("netbridge"));

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    fn ok(self) -> Value {
        assert_eq!(
            self.code,
            Some(0),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self.json()
    }

    /// An API error: exit 1, CloudStack's error JSON on stdout, a line on stderr.
    fn api_error(self, code: u16, text_part: &str) {
        assert_eq!(
            self.code,
            Some(1),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        let v = self.json();
        // CloudStack's shape: `<command>response` (or `errorresponse` for an
        // unknown command) with uuidList, errorcode, cserrorcode, errortext.
        let err = v
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.values().next())
            .cloned()
            .unwrap_or_else(|| panic!("one top-level key: {v}"));
        assert_eq!(err["errorcode"], code, "{v}");
        assert_eq!(err["uuidList"], serde_json::json!([]), "{v}");
        assert!(err["cserrorcode"].is_u64(), "{v}");
        let text = err["errortext"].as_str().unwrap_or("");
        assert!(
            text.contains(text_part),
            "errortext {text:?} lacks {text_part:?}"
        );
        assert!(self.stderr.contains(text_part), "stderr: {}", self.stderr);
        assert!(
            self.stderr.contains(&format!("error code {code}")),
            "stderr: {}",
            self.stderr
        );
    }
}

fn netbridge(state: &Path, args: &[&str]) -> Run {
    let out: Output = Command::new(&*BIN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("NETBRIDGE_STATE_DIR")
        .output()
        .expect("run netbridge");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The extension object of a single-extension response.
fn extension<'a>(v: &'a Value, response: &str) -> &'a Value {
    let inner = &v[response];
    if inner["extension"].is_object() {
        &inner["extension"]
    } else {
        inner
    }
}

#[test]
fn create_register_update_list_with_details() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");

    let created = netbridge(
        &state,
        &[
            "api",
            "createExtension",
            "name=cli-ext",
            "type=NetworkOrchestrator",
            // Everything after the first `=` is the value.
            "description=a=b c",
            "details[0].key=network.services",
            "details[0].value=Dhcp,Dns,UserData",
        ],
    )
    .ok();
    let ext = extension(&created, "createextensionresponse");
    let id = ext["id"].as_str().expect("extension id").to_string();
    assert_eq!(ext["name"], "cli-ext");
    assert_eq!(ext["description"], "a=b c");

    let pn = uuid::Uuid::new_v4().to_string();
    let registered = netbridge(
        &state,
        &[
            "api",
            "registerExtension",
            &format!("extensionid={id}"),
            &format!("resourceid={pn}"),
            "resourcetype=PhysicalNetwork",
            "details[0].key=hosts",
            "details[0].value=192.0.2.10",
        ],
    )
    .ok();
    assert_eq!(
        extension(&registered, "registerextensionresponse")["id"],
        id.as_str()
    );

    let updated = netbridge(
        &state,
        &[
            "api",
            "updateRegisteredExtension",
            &format!("extensionid={id}"),
            &format!("resourceid={pn}"),
            "resourcetype=PhysicalNetwork",
            "details[0].key=guest.network.device",
            "details[0].value=eth1",
            "details[1].key=password",
            "details[1].value=cli-secret-value",
        ],
    )
    .ok();
    assert_eq!(
        extension(&updated, "updateregisteredextensionresponse")["id"],
        id.as_str()
    );

    let run = netbridge(&state, &["api", "listExtensions", &format!("id={id}")]);
    assert!(!run.stdout.contains("cli-secret-value"), "{}", run.stdout);
    let listed = run.ok();
    let exts = listed["listextensionsresponse"]["extension"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(exts.len(), 1, "{listed}");
    assert_eq!(exts[0]["name"], "cli-ext");
    let resources = exts[0]["resources"].as_array().cloned().unwrap_or_default();
    assert_eq!(resources.len(), 1, "{listed}");
    let details = &resources[0]["details"];
    assert_eq!(details["guest.network.device"], "eth1", "{listed}");
    // Visible keys not re-sent are gone; hidden ones are never shown.
    assert!(details.get("hosts").is_none(), "{listed}");
    assert!(details.get("password").is_none(), "{listed}");
}

#[test]
fn api_errors_exit_non_zero_with_the_errortext() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path();

    netbridge(state, &["api", "createExtension", "name=bad", "type=Bogus"])
        .api_error(530, "Invalid type specified - Bogus");

    netbridge(state, &["api", "noSuchCommand"]).api_error(432, "noSuchCommand");

    // Parameter names are case-insensitive, so this is a repeat.
    netbridge(state, &["api", "listExtensions", "name=a", "NAME=b"])
        .api_error(431, "Parameter name given more than once");

    netbridge(state, &["api", "listExtensions", "keyword=a\u{1}b"]).api_error(
        431,
        "Received value containing illegal ASCII non-printable characters for parameter keyword",
    );
}

#[test]
fn bad_arguments_name_the_argument() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path();

    let run = netbridge(state, &["api", "listExtensions", "oops"]);
    assert_eq!(run.code, Some(2));
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("invalid argument 'oops': expected key=value"),
        "{}",
        run.stderr
    );

    let run = netbridge(state, &["api", "listExtensions", "=value"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("invalid argument '=value'"),
        "{}",
        run.stderr
    );

    let run = netbridge(state, &["--log-level", "loud", "api", "listExtensions"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("unknown log level 'loud'"),
        "{}",
        run.stderr
    );

    let run = netbridge(state, &["api"]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("<COMMAND>"), "{}", run.stderr);
}

#[test]
fn keys_create_prints_the_secret_once_and_list_never_shows_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("fresh");

    let created = netbridge(&state, &["keys", "create", "--name", "ops"]).ok();
    let apikey = created["apikey"].as_str().expect("apikey").to_string();
    let secret = created["secretkey"]
        .as_str()
        .expect("secretkey")
        .to_string();
    assert_eq!(created["name"], "ops");

    // In the store, sealed: the database never holds the secret in plain text.
    let db = std::fs::read(state.join("netbridge.db")).expect("database");
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret key is stored in plain text"
    );
    assert!(!state.join("api-keys.toml").exists());
    // With --keys-file the key goes to that file, private.
    let file = state.join("local-keys.toml");
    let file_arg = file.to_str().expect("path");
    netbridge(
        &state,
        &["keys", "create", "--name", "local", "--keys-file", file_arg],
    )
    .ok();
    let mode = std::fs::metadata(&file)
        .expect("keys file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let listed = netbridge(&state, &["keys", "list", "--keys-file", file_arg]).ok();
    assert_eq!(listed[0]["name"], "local");

    let run = netbridge(&state, &["keys", "list"]);
    assert!(!run.stdout.contains(&secret));
    let listed = run.ok();
    assert_eq!(
        listed,
        serde_json::json!([{"name": "ops", "apikey": apikey}])
    );

    let run = netbridge(&state, &["keys", "create", "--name", "ops"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("a key named 'ops' already exists"),
        "{}",
        run.stderr
    );

    let run = netbridge(&state, &["keys", "create", "--name", "no spaces"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("invalid key name 'no spaces'"),
        "{}",
        run.stderr
    );
}

#[test]
fn database_and_key_file_options_are_honoured() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("unused");
    let db = dir.path().join("elsewhere").join("custom.db");
    let key = dir.path().join("elsewhere").join("custom.key");
    let run = Command::new(&*BIN)
        .arg("--state-dir")
        .arg(&state)
        .arg("--database")
        .arg(&db)
        .arg("--key-file")
        .arg(&key)
        .args(["api", "listExtensions"])
        .output()
        .expect("run netbridge");
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(db.exists(), "database created at --database");
    assert!(!state.join("netbridge.db").exists());
}

#[test]
fn generated_offerings_print_as_cmk_lines_and_validate_through_the_cli() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path();
    let created = netbridge(
        state,
        &[
            "api",
            "createExtension",
            "name=cli-offers",
            "type=NetworkOrchestrator",
            "details[0].key=network.services",
            "details[0].value=Dhcp,Dns,UserData,SourceNat",
            "details[1].key=network.service.capabilities",
            r#"details[1].value={"SourceNat":{"SupportedSourceNatTypes":"peraccount"}}"#,
        ],
    )
    .ok();
    let id = extension(&created, "createextensionresponse")["id"]
        .as_str()
        .expect("id")
        .to_string();

    let run = netbridge(
        state,
        &[
            "api",
            "--cmk",
            "generateNetworkOfferings",
            &format!("extensionid={id}"),
            "offeringtype=isolated",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    let line = lines[0];
    assert!(line.starts_with("cmk createNetworkOffering "), "{line}");
    for part in [
        " guestiptype=Isolated",
        " 'serviceProviderList[0].provider=cli-offers'",
        " 'serviceCapabilityList[0].capabilityvalue=peraccount'",
        " supportedservices=Dhcp,Dns,UserData,SourceNat",
    ] {
        assert!(line.contains(part), "{part:?} missing in {line}");
    }

    // CloudStack's camel-case map parameters reach the dispatcher unharmed.
    netbridge(
        state,
        &[
            "api",
            "validateNetworkOffering",
            &format!("extensionid={id}"),
            "supportedservices=Dhcp,SourceNat",
            "serviceProviderList[0].service=Dhcp",
            "serviceProviderList[0].provider=cli-offers",
            "serviceProviderList[1].service=SourceNat",
            "serviceProviderList[1].provider=cli-offers",
            "serviceCapabilityList[0].service=SourceNat",
            "serviceCapabilityList[0].capabilitytype=SupportedSourceNatTypes",
            "serviceCapabilityList[0].capabilityvalue=peraccount",
        ],
    )
    .ok();
    netbridge(
        state,
        &[
            "api",
            "validateNetworkOffering",
            &format!("extensionid={id}"),
            "supportedservices=Dhcp,SourceNat",
            "serviceCapabilityList[0].service=SourceNat",
            "serviceCapabilityList[0].capabilitytype=SupportedSourceNatTypes",
            "serviceCapabilityList[0].capabilityvalue=perzone",
        ],
    )
    .api_error(431, "perzone");
}

#[test]
fn output_formats_async_jobs_and_a_closed_pipe() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path();
    netbridge(
        state,
        &[
            "api",
            "createExtension",
            "name=tbl",
            "type=NetworkOrchestrator",
            "details[0].key=network.services",
            "details[0].value=Dhcp,Dns",
        ],
    )
    .ok();
    let pn = "9c9c9c9c-0000-4000-8000-000000000001";
    let listed = netbridge(state, &["api", "listExtensions", "name=tbl"]).ok();
    let ext = listed["listextensionsresponse"]["extension"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    netbridge(
        state,
        &[
            "api",
            "registerExtension",
            &format!("extensionid={ext}"),
            &format!("resourceid={pn}"),
            "resourcetype=PhysicalNetwork",
        ],
    )
    .ok();

    // A table as an admin reads it: one row per object, id and name first.
    let t = netbridge(
        state,
        &["api", "--output", "table", "listNetworkServiceProviders"],
    );
    assert_eq!(t.code, Some(0), "{}", t.stderr);
    let lines: Vec<&str> = t.stdout.lines().collect();
    assert!(
        lines[0].starts_with("+-") && lines[2].starts_with("+-"),
        "{}",
        t.stdout
    );
    assert!(lines[1].starts_with("| id "), "{}", t.stdout);
    assert!(
        lines[1].contains("| name ") && lines[1].contains("| servicelist "),
        "{}",
        t.stdout
    );
    assert!(
        lines[3].contains("| tbl ") && lines[3].contains("Dhcp, Dns"),
        "{}",
        t.stdout
    );
    assert_eq!(lines.len(), 5, "{}", t.stdout);

    // An async command waits for its job and prints the job's answer.
    let provider = netbridge(state, &["api", "listNetworkServiceProviders"]).ok()
        ["listnetworkserviceprovidersresponse"]["networkserviceprovider"][0]["id"]
        .as_str()
        .expect("provider")
        .to_string();
    let job = netbridge(
        state,
        &[
            "api",
            "updateNetworkServiceProvider",
            &format!("id={provider}"),
            "state=Disabled",
        ],
    )
    .ok();
    let job = &job["queryasyncjobresultresponse"];
    assert_eq!(job["jobstatus"], 1, "{job}");
    assert_eq!(
        job["jobresult"]["networkserviceprovider"]["state"],
        "Disabled"
    );
    // A failing job: exit 1, its error in the text output.
    let failed = netbridge(
        state,
        &[
            "api",
            "-o",
            "text",
            "updateNetworkServiceProvider",
            &format!("id={provider}"),
            "servicelist=Lb",
        ],
    );
    assert_eq!(failed.code, Some(1), "{}", failed.stdout);
    assert!(failed.stdout.contains("jobstatus = 2"), "{}", failed.stdout);
    assert!(
        failed
            .stdout
            .contains("errortext=Service Lb in parameter servicelist"),
        "{}",
        failed.stdout
    );

    // `| head`: the reader has gone away (the pipe's read end is closed
    // before netbridge starts, so its first write fails with EPIPE);
    // netbridge exits quietly: no panic, nothing on stderr.
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two new descriptors, each owned exactly once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let out = Command::new(&*BIN)
        .arg("--state-dir")
        .arg(state)
        .args(["api", "listApis"])
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "stderr: {stderr}");
    assert_eq!(out.status.code(), Some(0));
}

/// A key file the user running the CLI cannot read (root's, 0600; the CLI
/// runs as `nobody`): the configuration error 431 naming the key file and
/// the problem, exit 1, and no database is created. Root only.
#[test]
fn an_unreadable_key_file_is_a_configuration_error() {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skip an_unreadable_key_file_is_a_configuration_error: needs root");
        return;
    }
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    let key = state.join("secret.key");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .unwrap();
    std::io::Write::write_all(&mut f, &[7u8; 32]).unwrap();
    drop(f);
    let out = Command::new(&*BIN)
        .arg("--state-dir")
        .arg(&state)
        .args(["api", "listExtensions"])
        .env_remove("NETBRIDGE_STATE_DIR")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run netbridge");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    run.api_error(
        431,
        &format!("cannot open key file {}: Permission denied", key.display()),
    );
    assert!(!state.join("netbridge.db").exists(), "database created");
}

#[test]
fn the_configuration_file_places_the_store_and_flags_win() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("from-file");
    let config = dir.path().join("netbridge.toml");
    std::fs::write(&config, format!("state_dir = \"{}\"\n", store.display())).expect("config");
    let run = |extra: &[&str]| {
        Command::new(&*BIN)
            .arg("--config")
            .arg(&config)
            .args(extra)
            .args(["api", "listExtensions"])
            .env_remove("NETBRIDGE_STATE_DIR")
            .output()
            .expect("run netbridge")
    };
    let out = run(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        store.join("netbridge.db").exists(),
        "store placed by the file"
    );
    assert!(store.join("secret.key").exists());
    // A flag wins over the file.
    let flagged = dir.path().join("from-flag");
    let out = run(&["--state-dir", flagged.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        flagged.join("netbridge.db").exists(),
        "store placed by the flag"
    );
    // A typo is refused, naming the key; nothing is created.
    std::fs::write(&config, "stat_dir = \"/nonexistent\"\n").expect("config");
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("configuration file") && err.contains("stat_dir"),
        "{err}"
    );
}
