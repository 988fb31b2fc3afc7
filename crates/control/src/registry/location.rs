//! Where the registry lives: the one setting every door shares (Java
//! `NetBridgeConfig`, `--database`, the entry point, `netbridge serve`).
//!
//! Accepted forms:
//! - a path, or `sqlite:///absolute/path` (`sqlite://relative/path`): the
//!   embedded SQLite store;
//! - `mysql://user[:password]@host[:port]/database[?param=value&…]`
//!   (`mariadb://` too): CloudStack's database. The password may also come
//!   from the environment variable `NETBRIDGE_DB_PASSWORD` (preferred: a URL
//!   ends up in process listings). Parameters are the driver's: TLS with
//!   `root_cert_path=/path/ca.pem` (the server is verified against that CA),
//!   `socket=/run/mysqld/mysqld.sock` (a server named `localhost` or
//!   127.0.0.1 is reached through the Unix socket it reports anyway, unless
//!   `prefer_socket=false`; naming it saves the TCP connection that asks),
//!   `pool_min`, `pool_max`, `tcp_connect_timeout_ms`, `check_health=true`
//!   (a ping before each use of a pooled connection; by default a
//!   connection found dead is replaced and the call retried instead), …;
//!   and netbridge's own `lock_wait_timeout`
//!   (seconds a statement waits for rows another server holds, default 10,
//!   before the transaction is retried);
//! - CloudStack's `db.properties` ([`StoreLocation::from_cloudstack_db_properties`]):
//!   `db.cloud.host`, `db.cloud.port`, `db.cloud.username`,
//!   `db.cloud.password`, `db.cloud.name`.
//!
//! A location never shows its password: [`std::fmt::Display`] prints
//! `mysql://user@host:port/cloud`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::Secret;

/// Environment variable with the MySQL password when the location has none.
pub const PASSWORD_ENV: &str = "NETBRIDGE_DB_PASSWORD";

/// A location that cannot be used, naming what to fix. Configuration
/// errors: the callers exit 1 / answer a configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LocationError(pub String);

/// The store: SQLite file or MySQL/MariaDB server.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Mysql(MysqlLocation),
}

/// A MySQL/MariaDB database (CloudStack's `cloud` schema).
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlLocation {
    pub user: String,
    pub password: Option<Secret>,
    pub host: String,
    pub port: u16,
    pub database: String,
    /// Driver parameters (TLS, socket, pool sizes, timeouts).
    pub params: BTreeMap<String, String>,
}

const DEFAULT_PORT: u16 = 3306;

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreLocation({self})")
    }
}

impl fmt::Debug for MysqlLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MysqlLocation({self})")
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            StoreLocation::Mysql(m) => m.fmt(f),
        }
    }
}

impl fmt::Display for MysqlLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "mysql://{}@{host}:{}/{}",
            self.user, self.port, self.database
        )
    }
}

impl From<PathBuf> for StoreLocation {
    fn from(path: PathBuf) -> Self {
        StoreLocation::Sqlite(path)
    }
}

impl From<&Path> for StoreLocation {
    fn from(path: &Path) -> Self {
        StoreLocation::Sqlite(path.to_path_buf())
    }
}

impl StoreLocation {
    /// Parses the setting (see the module docs). A MySQL location without a
    /// password takes `NETBRIDGE_DB_PASSWORD` when set.
    pub fn parse(text: &str) -> Result<StoreLocation, LocationError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(LocationError("database: empty location".into()));
        }
        let lower = text.to_ascii_lowercase();
        if let Some(rest) = lower
            .strip_prefix("sqlite://")
            .map(|_| &text["sqlite://".len()..])
        {
            if rest.is_empty() {
                return Err(LocationError(
                    "database: sqlite:// needs a file path, e.g. sqlite:///var/lib/netbridge/netbridge.db"
                        .into(),
                ));
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(rest)));
        }
        for scheme in ["mysql://", "mariadb://"] {
            if lower.starts_with(scheme) {
                let mut m = parse_mysql_url(&text[scheme.len()..])?;
                if m.password.is_none() {
                    m.password = std::env::var(PASSWORD_ENV)
                        .ok()
                        .filter(|p| !p.is_empty())
                        .map(Secret::new);
                }
                return Ok(StoreLocation::Mysql(m));
            }
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(LocationError(format!(
                "database: unsupported scheme '{}://' (use a path, sqlite:///path or mysql://user@host:port/cloud)",
                netbridge_protocol::sanitize_for_message(scheme)
            )));
        }
        Ok(StoreLocation::Sqlite(PathBuf::from(text)))
    }

    /// CloudStack's own `db.properties`
    /// (`/etc/cloudstack/management/db.properties`): host, port, user,
    /// password and name of the `cloud` schema, so an operator configures
    /// nothing twice. A password in CloudStack's encrypted `ENC(…)` form is
    /// refused: it needs CloudStack's management key and encryptor, which
    /// netbridge does not have.
    pub fn from_cloudstack_db_properties(file: &Path) -> Result<StoreLocation, LocationError> {
        let shown = file.display();
        let text = std::fs::read_to_string(file).map_err(|e| {
            LocationError(format!(
                "cannot read CloudStack database properties {shown}: {e}"
            ))
        })?;
        let props = parse_properties(&text);
        let get = |key: &str| props.get(key).map(String::as_str).filter(|v| !v.is_empty());
        let need = |key: &str| {
            get(key).ok_or_else(|| LocationError(format!("{shown}: '{key}' is missing or empty")))
        };
        let host = need("db.cloud.host")?.to_string();
        let port = match get("db.cloud.port") {
            None => DEFAULT_PORT,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                LocationError(format!(
                    "{shown}: db.cloud.port '{}' is not a TCP port",
                    netbridge_protocol::sanitize_for_message(p)
                ))
            })?,
        };
        let user = need("db.cloud.username")?.to_string();
        let database = get("db.cloud.name").unwrap_or("cloud").to_string();
        let password = match get("db.cloud.password") {
            None => None,
            Some(p) if p.starts_with("ENC(") => {
                return Err(LocationError(format!(
                    "{shown}: db.cloud.password is encrypted (ENC(…), db.cloud.encryption.type={}); \
                     netbridge cannot decrypt CloudStack's encrypted properties. Give the password in \
                     the environment variable {PASSWORD_ENV} and the location as \
                     mysql://{user}@{host}:{port}/{database} instead",
                    get("db.cloud.encryption.type").unwrap_or("file"),
                )));
            }
            Some(p) => Some(Secret::new(p)),
        };
        if get("db.cloud.useSSL").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Err(LocationError(format!(
                "{shown}: db.cloud.useSSL=true uses a Java keystore, which netbridge cannot read; \
                 give the location as mysql://{user}@{host}:{port}/{database}?root_cert_path=/path/to/ca.pem"
            )));
        }
        let password = password.or_else(|| {
            std::env::var(PASSWORD_ENV)
                .ok()
                .filter(|p| !p.is_empty())
                .map(Secret::new)
        });
        Ok(StoreLocation::Mysql(MysqlLocation {
            user,
            password,
            host,
            port,
            database,
            params: BTreeMap::new(),
        }))
    }

    /// The SQLite file, if this is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            StoreLocation::Sqlite(p) => Some(p),
            StoreLocation::Mysql(_) => None,
        }
    }
}

fn percent_decode(part: &str, field: &str) -> Result<String, LocationError> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| LocationError(format!("database: the {field} is not valid UTF-8")))
}

/// `user[:password]@host[:port]/database[?k=v&…]` (after the scheme).
fn parse_mysql_url(rest: &str) -> Result<MysqlLocation, LocationError> {
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = main.split_once('/').ok_or_else(|| {
        LocationError(
            "database: a MySQL location needs a database name: mysql://user@host:port/cloud".into(),
        )
    })?;
    let database = percent_decode(path, "database name")?;
    if database.is_empty() || database.contains('/') || database.len() > 64 {
        return Err(LocationError(
            "database: a MySQL location needs a database name (1 to 64 characters): mysql://user@host:port/cloud"
                .into(),
        ));
    }
    let (userinfo, hostport) = authority.rsplit_once('@').ok_or_else(|| {
        LocationError(
            "database: a MySQL location needs a user: mysql://user@host:port/cloud".into(),
        )
    })?;
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (
            percent_decode(u, "user")?,
            Some(Secret::new(percent_decode(p, "password")?)),
        ),
        None => (percent_decode(userinfo, "user")?, None),
    };
    if user.is_empty() {
        return Err(LocationError(
            "database: a MySQL location needs a user: mysql://user@host:port/cloud".into(),
        ));
    }
    let (host, port) = split_host_port(hostport)?;
    let mut params = BTreeMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, "parameter name")?;
        if matches!(
            k.as_str(),
            "user" | "password" | "host" | "port" | "db_name"
        ) {
            return Err(LocationError(format!(
                "database: parameter '{k}' belongs in the location itself (mysql://user@host:port/cloud)"
            )));
        }
        params.insert(k, percent_decode(v, "parameter value")?);
    }
    Ok(MysqlLocation {
        user,
        password,
        host,
        port,
        database,
        params,
    })
}

fn split_host_port(hostport: &str) -> Result<(String, u16), LocationError> {
    let bad_port = |p: &str| {
        LocationError(format!(
            "database: port '{}' is not a TCP port",
            netbridge_protocol::sanitize_for_message(p)
        ))
    };
    let parse_port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad_port(p))
    };
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| LocationError("database: unterminated [IPv6] host".into()))?;
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), parse_port(p)?),
            None if after.is_empty() => (h.to_string(), DEFAULT_PORT),
            None => return Err(bad_port(after)),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), parse_port(p)?),
            None => (hostport.to_string(), DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return Err(LocationError(
            "database: a MySQL location needs a host: mysql://user@host:port/cloud".into(),
        ));
    }
    Ok((host, port))
}

/// Java `.properties` as CloudStack writes them: `key=value` or
/// `key: value` lines, `#`/`!` comments; no line continuations are used there.
fn parse_properties(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let split = line.find(['=', ':']);
        let (k, v) = match split {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_sqlite_urls() {
        assert_eq!(
            StoreLocation::parse("/var/lib/nb.db").unwrap(),
            StoreLocation::Sqlite("/var/lib/nb.db".into())
        );
        assert_eq!(
            StoreLocation::parse("sqlite:///var/lib/nb.db").unwrap(),
            StoreLocation::Sqlite("/var/lib/nb.db".into())
        );
        assert_eq!(
            StoreLocation::parse("relative.db").unwrap(),
            StoreLocation::Sqlite("relative.db".into())
        );
        assert!(StoreLocation::parse("sqlite://").is_err());
        let e = StoreLocation::parse("postgres://x@y/z").unwrap_err().0;
        assert!(e.contains("unsupported scheme 'postgres://'"), "{e}");
        assert!(StoreLocation::parse("  ").is_err());
    }

    #[test]
    fn mysql_urls() {
        let StoreLocation::Mysql(m) = StoreLocation::parse(
            "mysql://cloud:p%40ss@db.example:3307/cloud?root_cert_path=/ca.pem",
        )
        .unwrap() else {
            panic!("not mysql")
        };
        assert_eq!(m.user, "cloud");
        assert_eq!(m.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!((m.host.as_str(), m.port), ("db.example", 3307));
        assert_eq!(m.database, "cloud");
        assert_eq!(
            m.params.get("root_cert_path").map(String::as_str),
            Some("/ca.pem")
        );
        // Never shows the password.
        assert_eq!(m.to_string(), "mysql://cloud@db.example:3307/cloud");
        assert!(!format!("{m:?}").contains("p@ss"));
        let StoreLocation::Mysql(m) = StoreLocation::parse("mariadb://u@[::1]/c").unwrap() else {
            panic!("not mysql")
        };
        assert_eq!((m.host.as_str(), m.port), ("::1", 3306));
        for (bad, what) in [
            ("mysql://db:3306/cloud", "needs a user"),
            ("mysql://u@db:3306", "needs a database name"),
            ("mysql://u@db:99999/cloud", "port '99999'"),
            ("mysql://u@:3306/cloud", "needs a host"),
            ("mysql://u@db/cloud?password=x", "parameter 'password'"),
        ] {
            let e = StoreLocation::parse(bad).unwrap_err().0;
            assert!(e.contains(what), "{bad}: {e}");
        }
    }

    #[test]
    fn cloudstack_db_properties() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.properties");
        std::fs::write(
            &file,
            "# CloudStack\ndb.cloud.username=cloud\ndb.cloud.password=s3cret\n\
             db.cloud.host=10.0.0.5\ndb.cloud.port = 3306\ndb.cloud.name=cloud\n\
             db.cloud.encryption.type=none\n",
        )
        .unwrap();
        let StoreLocation::Mysql(m) = StoreLocation::from_cloudstack_db_properties(&file).unwrap()
        else {
            panic!("not mysql")
        };
        assert_eq!(m.to_string(), "mysql://cloud@10.0.0.5:3306/cloud");
        assert_eq!(m.password.as_ref().map(Secret::expose), Some("s3cret"));

        std::fs::write(
            &file,
            "db.cloud.username=cloud\ndb.cloud.password=ENC(vlk5Xk7Bw9E=)\n\
             db.cloud.host=db\ndb.cloud.encryption.type=file\n",
        )
        .unwrap();
        let e = StoreLocation::from_cloudstack_db_properties(&file)
            .unwrap_err()
            .0;
        assert!(e.contains("db.cloud.password is encrypted"), "{e}");
        assert!(e.contains(PASSWORD_ENV), "{e}");
        assert!(!e.contains("vlk5Xk7Bw9E"), "{e}");

        std::fs::write(&file, "db.cloud.username=cloud\n").unwrap();
        let e = StoreLocation::from_cloudstack_db_properties(&file)
            .unwrap_err()
            .0;
        assert!(e.contains("'db.cloud.host' is missing"), "{e}");
        let e = StoreLocation::from_cloudstack_db_properties(&dir.path().join("none"))
            .unwrap_err()
            .0;
        assert!(
            e.contains("cannot read CloudStack database properties"),
            "{e}"
        );
    }
}
