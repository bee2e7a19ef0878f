//! Binding TCP listeners the way a gateway needs them: `SO_REUSEADDR`, so a restarted process
//! gets its ports back while old connections linger in TIME_WAIT, and a deep accept backlog, so
//! a reconnect storm (every terminal of a restarted comet coming back at once) waits in the
//! kernel's queue instead of having its SYNs dropped and retried a second later.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel may hold for a listener before it accepts them; Linux caps it at
/// `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 8192;

/// Binds a listener on `addr`.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}
