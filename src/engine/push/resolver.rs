//! Who wins an update (§7.9): the resolver trait embedders plug in, last-writer-wins (the
//! default, with the clock-skew tolerance `CLOCK_SKEW_MS`) and server-wins.

use std::time::{Duration, SystemTime};

/// Decides whether a client update wins over the server row (§7.9). `Err` carries the
/// `message` of the `server_won_conflict` result. Embedders plug in their own.
pub trait ConflictResolver: Send + Sync {
    /// `server`: the row's updated-at value; `client`: `client_updated_at`; `base`:
    /// `base_updated_at` (unparseable values arrive as `None`).
    fn resolve(
        &self,
        server: Option<SystemTime>,
        client: Option<SystemTime>,
        base: Option<SystemTime>,
    ) -> Result<(), String>;
}

/// The default: last writer wins, with a clock-skew tolerance added to the client's time.
#[derive(Debug, Clone, Copy, Default)]
pub struct LastWriterWins {
    /// Added to `client_updated_at` before comparing.
    pub skew: Duration,
}

impl ConflictResolver for LastWriterWins {
    fn resolve(
        &self,
        server: Option<SystemTime>,
        client: Option<SystemTime>,
        base: Option<SystemTime>,
    ) -> Result<(), String> {
        last_writer_wins(server, client, base, self.skew).map_err(str::to_string)
    }
}

/// The server's row always wins an update (creates and deletes still apply).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerWins;

impl ConflictResolver for ServerWins {
    fn resolve(&self, _: Option<SystemTime>, _: Option<SystemTime>, _: Option<SystemTime>) -> Result<(), String> {
        Err("server always wins".into())
    }
}

/// Last-writer-wins (§7.9): `Ok` when the client wins, else the resolver's reason.
pub fn last_writer_wins(
    server: Option<SystemTime>,
    client: Option<SystemTime>,
    base: Option<SystemTime>,
    skew: Duration,
) -> Result<(), &'static str> {
    let server = server.unwrap_or(SystemTime::UNIX_EPOCH - Duration::from_secs(62_135_596_800));
    let client = client.map(|c| c + skew);
    match base {
        Some(b) if b > server => Err("client base version is ahead of server version"),
        Some(b) if b == server => Ok(()),
        _ => match client {
            Some(c) if c > server => Ok(()),
            _ => Err("server version is newer"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    }

    #[test]
    fn conflict_matrix() {
        let z = Duration::ZERO;
        assert_eq!(last_writer_wins(at(100), at(200), None, z), Ok(()), "client newer");
        assert_eq!(last_writer_wins(at(200), at(100), None, z), Err("server version is newer"));
        assert_eq!(
            last_writer_wins(at(100), at(100), None, z),
            Err("server version is newer"),
            "ties go to the server"
        );
        assert_eq!(last_writer_wins(at(100), at(95), None, Duration::from_secs(10)), Ok(()), "within skew");
        assert_eq!(last_writer_wins(at(100), at(50), at(100), z), Ok(()), "base equals server");
        assert_eq!(
            last_writer_wins(at(100), at(200), at(150), z),
            Err("client base version is ahead of server version")
        );
        assert_eq!(
            last_writer_wins(at(100), at(50), at(90), z),
            Err("server version is newer"),
            "stale base, older client"
        );
        assert_eq!(last_writer_wins(at(100), at(150), at(90), z), Ok(()), "stale base, newer client");
        assert_eq!(last_writer_wins(None, at(1), None, z), Ok(()), "NULL server: client wins without base");
        assert_eq!(last_writer_wins(None, at(1), at(1), z), Err("client base version is ahead of server version"));
        assert_eq!(last_writer_wins(at(100), None, None, z), Err("server version is newer"), "no client time");
        assert_eq!(ServerWins.resolve(at(1), at(100), None), Err("server always wins".to_string()));
        assert_eq!(LastWriterWins { skew: Duration::from_secs(10) }.resolve(at(100), at(95), None), Ok(()));
    }
}
