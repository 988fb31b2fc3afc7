//! `netbridge-executor`: the per-host daemon, plus certificate helpers.
//!
//! ```text
//! netbridge-executor [--config FILE] [flags…]        run the daemon
//! netbridge-executor gen-cert --out-dir DIR [--name host1] [--san IP|DNS]…
//! netbridge-executor fingerprint --cert FILE
//! netbridge-executor gen-key --out FILE
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use netbridge_executor::daemon::{self, tls, RunArgs};

#[derive(Parser)]
#[command(name = "netbridge-executor", version = netbridge_protocol::VERSION, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Sub {
    /// Write a self-signed certificate (cert.pem) and key (key.pem, mode 0600)
    /// and print the SHA-256 fingerprint to pin as `executor.fingerprint`.
    GenCert {
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// Common name (default: the hostname).
        #[arg(long)]
        name: Option<String>,
        /// Extra subject alternative names (IP address or DNS name), repeatable.
        #[arg(long = "san", value_name = "IP|DNS")]
        sans: Vec<String>,
    },
    /// Print the SHA-256 fingerprint of the leaf certificate of a PEM file.
    Fingerprint {
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
    },
    /// Write a new random HMAC key (64 hex characters, mode 0600) to FILE; the
    /// same string goes into the registration detail `executor.key`. Never
    /// overwrites an existing file.
    GenKey {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::GenCert {
            out_dir,
            name,
            sans,
        }) => {
            let name = name.unwrap_or_else(daemon::hostname);
            tls::generate_cert(&out_dir, &name, &sans).map(|out| {
                eprintln!("certificate: {}", out.cert_path.display());
                eprintln!("private key: {}", out.key_path.display());
                println!("{}", out.fingerprint);
            })
        }
        Some(Sub::Fingerprint { cert }) => tls::fingerprint_file(&cert).map(|fp| println!("{fp}")),
        Some(Sub::GenKey { out }) => daemon::auth::generate_key_file(&out)
            .map(|()| eprintln!("key written to {} (mode 0600)", out.display())),
        None => daemon::run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netbridge-executor: {e}");
            ExitCode::from(1)
        }
    }
}
