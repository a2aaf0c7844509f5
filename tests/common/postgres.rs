//! A private PostgreSQL server for the change data capture tests: initialised in a temp dir
//! with `wal_level = logical` on a free loopback port (the machine's own server runs with
//! `replica` and is shared), stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory of PostgreSQL's server programs (`initdb`, `pg_ctl`): `CLICKPULSE_PG_BIN`,
/// else the newest `/usr/lib/postgresql/*/bin`, else the `PATH`.
fn pg_bin(program: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("CLICKPULSE_PG_BIN") {
        return Path::new(&dir).join(program);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join(program).exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map_or_else(|| PathBuf::from(program), |dir| dir.join(program))
}

/// Whether this process runs as root (initdb refuses to: it then runs as `postgres`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a PostgreSQL program, as `postgres` when this is root.
fn as_owner(program: &Path, args: &[&str]) -> std::process::Output {
    let output = if is_root() {
        let mut line = program.display().to_string();
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        Command::new("su").args(["postgres", "-c", &line]).output()
    } else {
        Command::new(program).args(args).output()
    }
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The shop's tables in the tests.
pub const SCHEMA: &str = "
    CREATE TABLE orders (id bigint PRIMARY KEY, visitor_id text, total numeric(10,2),
        currency text, status text, created_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE order_lines (order_id bigint, line int, product_id text, price numeric(10,2),
        quantity int, PRIMARY KEY (order_id, line));
    CREATE TABLE cart_items (id bigserial PRIMARY KEY, visitor_id text, product_id text,
        quantity int);
    ALTER TABLE cart_items REPLICA IDENTITY FULL;
    CREATE TABLE audit (id serial PRIMARY KEY, note text);
";

/// The mapping the shop's tables get (the docs' example).
pub const MAPPING: &str =
    include_str!("../../crates/components/src/sources/postgres/shop-mapping.toml");

/// A running private server.
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Initialises and starts a server with database `shop`.
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let data = dir.path().join("pg");
        let data = data.to_str().unwrap();
        as_owner(
            &pg_bin("initdb"),
            &["-D", data, "-A", "trust", "-U", "postgres"],
        );
        let port = super::free_port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_wal_senders=4 \
             -c max_replication_slots=4 -c fsync=off -k {}",
            dir.path().display()
        );
        let log = dir.path().join("log");
        as_owner(
            &pg_bin("pg_ctl"),
            &[
                "-D",
                data,
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        let pg = Postgres { port, dir };
        pg.sql_in("postgres", "CREATE DATABASE shop");
        pg
    }

    /// Restarts the server (a fast shutdown: every connection is cut, as in a failover or an
    /// upgrade).
    pub fn restart(&self) {
        let data = self.dir.path().join("pg");
        // With its log file: a server started without one holds this process's pipes open.
        let log = self.dir.path().join("log");
        as_owner(
            &pg_bin("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "restart",
            ],
        );
    }

    /// Runs `sql` in database `shop` (one `psql -c`: one transaction unless it says otherwise)
    /// and returns what it printed (unaligned, tuples only).
    pub fn sql(&self, sql: &str) -> String {
        self.sql_in("shop", sql)
    }

    /// `psql` on database `db` of this server, stopping at the first error.
    fn psql(&self, db: &str) -> Command {
        let mut psql = Command::new(pg_bin("psql"));
        psql.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-d", db, "-v", "ON_ERROR_STOP=1"]);
        psql
    }

    fn sql_in(&self, db: &str, sql: &str) -> String {
        let output = self
            .psql(db)
            .args(["-At", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Starts `psql` reading statements from its standard input (a transaction held open
    /// while the test does something else).
    pub fn session(&self) -> std::process::Child {
        self.psql("shop")
            .arg("-q")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run psql")
    }

    /// The `[postgres]` table connecting to this server.
    pub fn config_table(&self) -> String {
        format!(
            "[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\ndatabase = \"shop\"\n",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("pg");
        let _ = std::panic::catch_unwind(|| {
            as_owner(
                &pg_bin("pg_ctl"),
                &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
            )
        });
    }
}
