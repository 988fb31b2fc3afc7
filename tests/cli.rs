//! `netbridge api …` end to end: the real binary on a temporary state
//! directory, create → register → updateRegisteredExtension → list, and the
//! errors a user sees for bad input.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_netbridge");

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
        assert_eq!(v["errorresponse"]["errorcode"], code, "{v}");
        let text = v["errorresponse"]["errortext"].as_str().unwrap_or("");
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
    let out: Output = Command::new(BIN)
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
        .api_error(431, "Invalid type specified - Bogus");

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

    let keys = state.join("api-keys.toml");
    let mode = std::fs::metadata(&keys)
        .expect("keys file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(&state)
        .expect("state dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);

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
    let run = Command::new(BIN)
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
fn the_configuration_file_places_the_store_and_flags_win() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("from-file");
    let config = dir.path().join("netbridge.toml");
    std::fs::write(&config, format!("state_dir = \"{}\"\n", store.display())).expect("config");
    let run = |extra: &[&str]| {
        Command::new(BIN)
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
