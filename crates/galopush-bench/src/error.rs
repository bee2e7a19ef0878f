//! Why a run could not be carried out at all. Failures during a run (a refused connection, a
//! lost delivery) are not errors of the run: they are counted in its report.

/// A run that could not start or could not set its terminals up.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bad arguments: {0}")]
    Args(String),
    #[error("open files: {0}")]
    OpenFiles(String),
    #[error("no process {0} to observe (--server-pid)")]
    ServerPid(u32),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The TLS client could not be set up (e.g. a bad --ca file).
    #[error("TLS: {0}")]
    Tls(galopush_client::ClientError),
    #[error("logging the terminals in failed: {0}")]
    Login(String),
    #[error("asking the dispatcher failed: {0}")]
    Dispatch(String),
    #[error("cannot resolve the comet address {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}
