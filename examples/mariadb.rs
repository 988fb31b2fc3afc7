//! A private MariaDB server with a CloudStack database, for the Java suites
//! and benchmarks that need one (they cannot start it themselves):
//!
//! ```text
//! cargo run --example mariadb -- [--physical-networks N] [--physical-network UUID]…
//!                                 [--server-option --key=value]…
//! ```
//!
//! Prints one JSON line, `{"url": "mysql://…", "socket_url": "mysql://…?socket=…",
//! "physical_networks": [uuid, …], "pid": …}`, then serves until its standard input closes (the caller
//! ends it by closing the pipe, or it dies with it), and stops the server
//! (by PID) and removes its data directory.

use std::io::{BufRead, Write};

use netbridge_testbed::mariadb::MariaDb;

fn main() {
    let mut networks = 10usize;
    let mut options: Vec<String> = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--physical-networks" => {
                networks = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--physical-networks N")
            }
            "--server-option" => options.push(args.next().expect("--server-option --key=value")),
            "--physical-network" => extra.push(args.next().expect("--physical-network UUID")),
            other => {
                eprintln!("unknown argument '{other}'");
                std::process::exit(1);
            }
        }
    }
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let mut server = MariaDb::start_with(&options);
    let db = server.cloud_database("cloud");
    let uuids: Vec<String> = (0..networks)
        .map(|i| {
            let uuid = format!("5e1f0000-0000-4000-8000-{i:012}");
            db.add_physical_network(&uuid);
            uuid
        })
        .chain(extra.into_iter().inspect(|uuid| {
            db.add_physical_network(uuid);
        }))
        .collect();
    let line = serde_json::json!({
        "url": db.url,
        "socket_url": db.socket_url,
        "database": db.name,
        "physical_networks": uuids,
        "pid": server.pid(),
    });
    println!("{line}");
    let _ = std::io::stdout().flush();
    // Until the caller closes our standard input.
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    server.stop();
}
