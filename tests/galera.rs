//! The replicated database CloudStack operators run: a three-node Galera
//! cluster (Debian's `galera-4` with MariaDB, three private nodes on
//! loopback ports, bootstrapped by `netbridge_testbed::mariadb::Galera`),
//! with three management servers each writing through a different node.
//!
//! - Updates that conflict at commit (certification failures) are retried
//!   and end consistent on every node.
//! - One node killed with SIGKILL in the middle of a burst: no acknowledged
//!   registration or journal entry is lost on the surviving nodes; the node
//!   rejoins and converges.
//!
//! The burst also races on the lock rows, so transactions are aborted by
//! conflicting replicated writes (brute-force aborts) at any statement,
//! including one whose rows were already sent: an acknowledgement must
//! mean a commit all the same.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use mysql::prelude::Queryable;
use netbridge_control::api::{Api, ApiConfig, Params};
use netbridge_control::dispatch::CommandJournal;
use netbridge_control::protocol::Command as NetCommand;
use netbridge_control::registry::{RegistryJournal, ResourceType, StoreLocation};
use netbridge_testbed::eventually;
use netbridge_testbed::mariadb::{Galera, GaleraDb};
use serde_json::{json, Value};

const PN: &str = "7b6b8a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const SECRET: &str = "galera-executor-key";
/// Writes of each surviving server in the burst, at least.
const BURST: usize = 30;
/// Writes of each surviving server acknowledged after the kill, at least.
const AFTER_KILL: usize = 3;
/// Bound of one server's burst (node 2 is killed long before).
const MAX_WRITES: usize = 500;

fn call(api: &Api, cmd: &str, params: &[(&str, &str)]) -> Result<Value, String> {
    let p: Params = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    api.call(cmd, &p)
        .map_err(|e| format!("{} {}", e.code, e.text))
}

/// [`call`] as a CloudStack client makes it: 534 means the store stayed
/// busy and nothing changed, so the same call is made again (bounded).
fn call_retrying(api: &Api, cmd: &str, params: &[(&str, &str)]) -> Result<Value, String> {
    let mut answer = call(api, cmd, params);
    for _ in 0..50 {
        match &answer {
            Err(e) if e.starts_with("534 ") => answer = call(api, cmd, params),
            _ => break,
        }
    }
    answer
}

fn server(db: &GaleraDb, node: usize, dir: &std::path::Path) -> Api {
    Api::open(ApiConfig {
        database: StoreLocation::parse(&db.url(node)).unwrap(),
        key_file: dir.join("secret.key"),
    })
    .unwrap()
}

/// A causal read through node `i` (waits for what the cluster committed).
fn sql_on<T: mysql::prelude::FromRow>(db: &GaleraDb, node: usize, query: &str) -> Vec<T> {
    let mut c = db.conn(node);
    c.query_drop("SET SESSION wsrep_sync_wait = 1").unwrap();
    c.query(query).unwrap()
}

fn certification_conflicts(g: &Galera) -> u64 {
    (0..3)
        .map(|i| {
            let rows: Vec<(String, String)> = g
                .root_conn(i)
                .query(
                    "SHOW STATUS WHERE Variable_name IN ('wsrep_local_cert_failures', 'wsrep_local_bf_aborts')",
                )
                .unwrap();
            rows.iter()
                .map(|(_, v)| v.parse::<u64>().unwrap_or(0))
                .sum::<u64>()
        })
        .sum()
}

fn dns(ip: &str) -> Value {
    json!({"payload": {"network_id": "7", "ip": ip, "hostname": format!("h-{ip}")}})
}

#[test]
fn three_servers_on_three_galera_nodes() {
    let mut g = Galera::start(3);
    assert_eq!(g.cluster_size(0), 3);
    let db = g.cloud_database("galera");
    db.conn(0)
        .exec_drop(
            // The zone's id is not 1 on every node: Galera spreads
            // AUTO_INCREMENT values over the nodes (wsrep_auto_increment_control).
            "INSERT INTO physical_network (uuid, name, data_center_id, state, created)
             SELECT ?, 'pn', id, 'Enabled', UTC_TIMESTAMP() FROM data_center WHERE name = 'zone1'",
            (PN,),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<Api> = (0..3).map(|i| server(&db, i, dir.path())).collect();

    // 1. Conflicting updates of one registration through the three nodes.
    let ext = call(
        &servers[0],
        "createExtension",
        &[("name", "galera-ext"), ("type", "NetworkOrchestrator")],
    )
    .unwrap()["createextensionresponse"]["extension"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    call(
        &servers[1],
        "registerExtension",
        &[
            ("extensionid", &ext),
            ("resourceid", PN),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].executor.key", SECRET),
        ],
    )
    .unwrap();
    let conflicts_before = certification_conflicts(&g);
    let barrier = std::sync::Barrier::new(3);
    std::thread::scope(|s| {
        for (i, api) in servers.iter().enumerate() {
            let (ext, barrier) = (&ext, &barrier);
            s.spawn(move || {
                barrier.wait();
                for round in 0..10 {
                    let tag = format!("n{i}-r{round}");
                    call_retrying(
                        api,
                        "updateRegisteredExtension",
                        &[
                            ("extensionid", ext),
                            ("resourceid", PN),
                            ("resourcetype", "PhysicalNetwork"),
                            ("details[0].set", &tag),
                            ("details[1].set.copy", &tag),
                        ],
                    )
                    .unwrap_or_else(|e| panic!("server {i} round {round}: {e}"));
                }
            });
        }
    });
    let conflicts = certification_conflicts(&g) - conflicts_before;
    println!("certification failures / brute-force aborts during the race: {conflicts}");
    let per_node: Vec<Vec<(String, String)>> = (0..3)
        .map(|i| {
            sql_on(
                &db,
                i,
                "SELECT name, value FROM extension_resource_map_details WHERE display = 1 ORDER BY name",
            )
        })
        .collect();
    assert_eq!(per_node[0], per_node[1]);
    assert_eq!(per_node[0], per_node[2]);
    assert_eq!(per_node[0].len(), 2, "{:?}", per_node[0]);
    assert_eq!(
        per_node[0][0].1, per_node[0][1].1,
        "a whole set: {:?}",
        per_node[0]
    );
    for api in &servers {
        let full = api
            .registry()
            .registration_details_full(&ext, ResourceType::PhysicalNetwork, PN)
            .unwrap();
        assert_eq!(full.get("executor.key"), Some(SECRET));
    }

    // 2. A burst of registrations and journal appends through the three
    // nodes; node 2 is killed in the middle of it. Servers 0 and 1 write
    // until some of their writes were acknowledged after the kill (through
    // the view change), server 2 until its node is gone.
    let journals: Vec<RegistryJournal> = servers
        .iter()
        .map(|a| RegistryJournal::new(a.registry_handle()))
        .collect();
    let acked: Vec<Mutex<Vec<String>>> = (0..3).map(|_| Mutex::new(Vec::new())).collect();
    // Set before the SIGKILL, and once node 2 is reaped.
    let killed = AtomicBool::new(false);
    let gone = AtomicBool::new(false);
    std::thread::scope(|s| {
        for i in 0..3 {
            let (api, journal, acked, killed, gone) =
                (&servers[i], &journals[i], &acked[i], &killed, &gone);
            s.spawn(move || {
                let mut after_kill = 0;
                for n in 0usize.. {
                    let done = if i == 2 {
                        gone.load(Ordering::SeqCst)
                    } else {
                        n >= BURST && after_kill >= AFTER_KILL
                    };
                    if done {
                        break;
                    }
                    assert!(n < MAX_WRITES, "server {i}: node 2 was not killed");
                    let name = format!("burst-{i}-{n}");
                    let ip = format!("10.{i}.{}.{}", n / 256, n % 256);
                    let created = call_retrying(
                        api,
                        "createExtension",
                        &[("name", &name), ("type", "Orchestrator")],
                    );
                    // A busy store changed nothing: the entry point retries too.
                    let record = || {
                        let mut result =
                            journal.record("cs-net-7", "h1", NetCommand::AddDnsEntry, &dns(&ip));
                        for _ in 0..50 {
                            match &result {
                                Err(e) if e.to_string().contains("busy") => {
                                    result = journal.record(
                                        "cs-net-7",
                                        "h1",
                                        NetCommand::AddDnsEntry,
                                        &dns(&ip),
                                    )
                                }
                                _ => break,
                            }
                        }
                        result
                    };
                    let recorded = created.is_ok() && record().is_ok();
                    if recorded {
                        acked.lock().unwrap().push(format!("{name} {ip}"));
                        if gone.load(Ordering::SeqCst) {
                            after_kill += 1;
                        }
                    } else if i == 2 && killed.load(Ordering::SeqCst) {
                        // Its node is gone: what it could not finish was never acknowledged.
                        return;
                    } else {
                        panic!("server {i} ({name}): {created:?}");
                    }
                }
            });
        }
        // The killer: once node 2's server has 10 acknowledged writes.
        let (acked2, killed, gone, g) = (&acked[2], &killed, &gone, &mut g);
        s.spawn(move || {
            let started = eventually(Duration::from_secs(300), || {
                (acked2.lock().unwrap().len() >= 10).then_some(())
            });
            assert!(started.is_some(), "no progress on node 2");
            killed.store(true, Ordering::SeqCst);
            g.kill9(2);
            gone.store(true, Ordering::SeqCst);
        });
    });
    let acked: Vec<Vec<String>> = acked.into_iter().map(|m| m.into_inner().unwrap()).collect();
    assert!(acked[0].len() >= BURST, "{}", acked[0].len());
    assert!(acked[1].len() >= BURST, "{}", acked[1].len());
    assert!(acked[2].len() >= 10, "{}", acked[2].len());
    // The survivors drop node 2 from the cluster once it has been silent
    // for evs.suspect_timeout (set by the harness), not at the kill itself.
    for node in [0, 1] {
        let evicted = eventually(Duration::from_secs(120), || {
            (g.cluster_size(node) == 2).then_some(())
        });
        assert!(evicted.is_some(), "node {node} still counts node 2");
    }
    let surviving = |node: usize| -> (Vec<String>, Vec<String>) {
        let names: Vec<String> = sql_on(
            &db,
            node,
            "SELECT name FROM extension WHERE name LIKE 'burst-%' AND removed IS NULL",
        );
        let state = journals[node].load("cs-net-7").unwrap();
        let ips = state
            .entries
            .iter()
            .filter_map(|e| e.envelope["payload"]["ip"].as_str().map(str::to_string))
            .collect();
        (names, ips)
    };
    for node in [0, 1] {
        let (names, ips) = surviving(node);
        for line in acked.iter().flatten() {
            let (name, ip) = line.split_once(' ').unwrap();
            assert!(names.iter().any(|n| n == name), "node {node} lost {name}");
            assert!(
                ips.iter().any(|i| i == ip),
                "node {node} lost the journal entry {ip}"
            );
        }
    }

    // 3. Node 2 rejoins and converges.
    g.restart(2);
    assert_eq!(g.cluster_size(2), 3);
    let reference = surviving(0);
    let mut rejoined = surviving(2);
    let mut sorted = reference.clone();
    sorted.0.sort();
    sorted.1.sort();
    rejoined.0.sort();
    rejoined.1.sort();
    assert_eq!(rejoined, sorted);
    // The servers carry on through every node.
    for api in &servers[..2] {
        call(
            api,
            "updateRegisteredExtension",
            &[
                ("extensionid", &ext),
                ("resourceid", PN),
                ("resourcetype", "PhysicalNetwork"),
                ("details[0].after", "rejoin"),
            ],
        )
        .unwrap();
    }
    let fresh = server(&db, 2, dir.path());
    let listed = call(&fresh, "listExtensions", &[("id", &ext)]).unwrap();
    assert_eq!(
        listed["listextensionsresponse"]["extension"][0]["resources"][0]["details"],
        json!({"after": "rejoin"})
    );
    drop(fresh);
    drop(servers);
    g.stop();
}
