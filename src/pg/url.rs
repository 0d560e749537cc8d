//! Connection strings: `postgres://` URLs and `key=value` conninfo, parsed into [`ConnParams`].
//!
//! Our own replication connection needs the pieces (host, port, user, password, database,
//! `sslmode`), and configuration needs to derive `REPLICATION_URL` from `DATABASE_URL`.
//! The pool hands the original string to the `postgres` crate, which parses it again.

use std::fmt;

/// A connection string that could not be parsed; the message says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnStringError(pub String);

impl fmt::Display for ConnStringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnStringError {}

/// Where to connect: a TCP host or the directory of a Unix-domain socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address.
    Tcp(String),
    /// A directory holding `.s.PGSQL.<port>` (a host that starts with `/`).
    UnixDir(String),
}

/// The parsed parts of a connection string. Unknown parameters are kept in `params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnParams {
    /// The host (default `localhost`).
    pub host: Host,
    /// The port (default 5432).
    pub port: u16,
    /// The role (default `postgres`).
    pub user: String,
    /// The password, if any.
    pub password: Option<String>,
    /// The database (default: the user name).
    pub dbname: String,
    /// Every other parameter, in order (`sslmode`, `replication`, `application_name`, ...).
    pub params: Vec<(String, String)>,
}

impl ConnParams {
    /// The value of a parameter other than host/port/user/password/dbname.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Sets a parameter (`Some`) or removes it (`None`).
    pub fn set_param(&mut self, key: &str, value: Option<&str>) {
        self.params.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.params.push((key.to_string(), v.to_string()));
        }
    }

    /// Renders a `key=value` conninfo string with every value quoted, which libpq and the
    /// `postgres` crate both read back to the same parameters.
    pub fn to_conninfo(&self) -> String {
        fn quote(v: &str) -> String {
            format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        let host = match &self.host {
            Host::Tcp(h) | Host::UnixDir(h) => h,
        };
        let mut out = format!("host={} port={} user={}", quote(host), self.port, quote(&self.user));
        if let Some(p) = &self.password {
            out.push_str(&format!(" password={}", quote(p)));
        }
        out.push_str(&format!(" dbname={}", quote(&self.dbname)));
        for (k, v) in &self.params {
            out.push_str(&format!(" {k}={}", quote(v)));
        }
        out
    }
}

/// Parses a `postgres://` / `postgresql://` URL or a `key=value` conninfo string.
pub fn parse(s: &str) -> Result<ConnParams, ConnStringError> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix("postgres://").or_else(|| s.strip_prefix("postgresql://")) {
        parse_url(rest)
    } else if s.contains('=') {
        parse_conninfo(s)
    } else {
        Err(ConnStringError("expected a postgres://user:password@host:port/dbname URL or key=value pairs".to_string()))
    }
}

/// Decodes `%XX` escapes as libpq does: a `%` without two hex digits after it is an error,
/// and so is a result that is not UTF-8.
fn percent_decode(s: &str) -> Result<String, ConnStringError> {
    let bytes = s.as_bytes();
    let well_formed = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .all(|(i, _)| bytes.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)));
    // The text is not echoed: it may be the password.
    if !well_formed {
        return Err(ConnStringError("invalid percent-encoding (expected %XX)".to_string()));
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|d| d.into_owned())
        .map_err(|_| ConnStringError("percent-encoded text is not UTF-8".to_string()))
}

fn parse_port(s: &str) -> Result<u16, ConnStringError> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        // Not echoed: a password with an unencoded `/` or `@` can end up parsed as the port.
        _ => Err(ConnStringError("invalid port: expected a number from 1 to 65535".to_string())),
    }
}

fn host_of(h: String) -> Host {
    if h.starts_with('/') {
        Host::UnixDir(h)
    } else {
        Host::Tcp(h)
    }
}

fn parse_url(rest: &str) -> Result<ConnParams, ConnStringError> {
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match main.split_once('/') {
        Some((a, p)) => (a, p),
        None => (main, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (mut user, mut password) = (None, None);
    if let Some(u) = userinfo {
        match u.split_once(':') {
            Some((name, pass)) => {
                user = Some(percent_decode(name)?);
                password = Some(percent_decode(pass)?);
            }
            None => user = Some(percent_decode(u)?),
        }
    }
    let (mut host, mut port) = (None, None);
    if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) =
            v6.split_once(']').ok_or_else(|| ConnStringError("unterminated [IPv6] host".to_string()))?;
        host = Some(addr.to_string());
        if let Some(p) = after.strip_prefix(':') {
            port = Some(parse_port(p)?);
        } else if !after.is_empty() {
            return Err(ConnStringError("unexpected text after the [IPv6] host".to_string()));
        }
    } else if !hostport.is_empty() {
        if hostport.contains(',') {
            return Err(ConnStringError("several hosts in one URL are not supported".to_string()));
        }
        match hostport.rsplit_once(':') {
            Some((h, p)) => {
                host = Some(percent_decode(h)?);
                port = Some(parse_port(p)?);
            }
            None => host = Some(percent_decode(hostport)?),
        }
    }
    let mut params = Vec::new();
    let mut dbname = if path.is_empty() { None } else { Some(percent_decode(path)?) };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| ConnStringError("a URL parameter has no value".to_string()))?;
        let (k, v) = (percent_decode(k)?, percent_decode(v)?);
        match k.as_str() {
            "host" => host = Some(v),
            "port" => port = Some(parse_port(&v)?),
            "user" => user = Some(v),
            "password" => password = Some(v),
            "dbname" => dbname = Some(v),
            _ => params.push((k, v)),
        }
    }
    finish(host, port, user, password, dbname, params)
}

fn finish(
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    params: Vec<(String, String)>,
) -> Result<ConnParams, ConnStringError> {
    let user = user.filter(|u| !u.is_empty()).unwrap_or_else(|| "postgres".to_string());
    let dbname = dbname.filter(|d| !d.is_empty()).unwrap_or_else(|| user.clone());
    let host = host_of(host.filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".to_string()));
    Ok(ConnParams { host, port: port.unwrap_or(5432), user, password, dbname, params })
}

fn parse_conninfo(s: &str) -> Result<ConnParams, ConnStringError> {
    let mut chars = s.chars().peekable();
    let (mut host, mut port, mut user, mut password, mut dbname) = (None, None, None, None, None);
    let mut params = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ConnStringError("a conninfo key is not followed by '='".to_string()));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(ConnStringError("unterminated quoted conninfo value".to_string())),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(ConnStringError("unterminated quoted conninfo value".to_string())),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        match key.as_str() {
            "host" | "hostaddr" => host = Some(value),
            "port" => port = Some(parse_port(&value)?),
            "user" => user = Some(value),
            "password" => password = Some(value),
            "dbname" => dbname = Some(value),
            "" => return Err(ConnStringError("empty conninfo key".to_string())),
            _ => params.push((key, value)),
        }
    }
    finish(host, port, user, password, dbname, params)
}

/// Keys whose values are secrets: the password, and the passphrase of a client key.
fn is_secret_key(key: &str) -> bool {
    matches!(key, "password" | "sslpassword")
}

/// `s` with every secret replaced by `***`, safe to print or log: in a URL the password of the
/// user info and the values of `password` / `sslpassword` parameters (keys percent-encoded or
/// not); in a conninfo string the values of those keys, quoted or not. A conninfo string that
/// does not parse is not shown at all, since where its values end is unknown.
///
/// ```
/// use synchro::pg::url::redact;
/// assert_eq!(redact("postgres://u:pw@h/db?sslmode=require&password=x"), "postgres://u:***@h/db?sslmode=require&password=***");
/// assert_eq!(redact("host=h password='a b' user=u"), "host=h password=*** user=u");
/// ```
pub fn redact(s: &str) -> String {
    if let Some(scheme_end) = s.find("://") {
        let (head, rest) = s.split_at(scheme_end + 3);
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        // The user info ends at the last `@`: a password may hold `/` or `@` unencoded.
        let main = match main.rfind('@') {
            Some(at) => match main[..at].find(':') {
                Some(colon) => format!("{}:***{}", &main[..colon], &main[at..]),
                None => main.to_string(),
            },
            None => main.to_string(),
        };
        let mut out = format!("{head}{main}");
        if let Some(query) = query {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if percent_decode(k).is_ok_and(|k| is_secret_key(&k)) || is_secret_key(k) => {
                        format!("{k}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            out.push('?');
            out.push_str(&pairs.join("&"));
        }
        return out;
    }
    if !s.contains('=') {
        return s.to_string();
    }
    redact_conninfo(s).unwrap_or_else(|| "(a connection string that does not parse; not shown)".to_string())
}

/// [`redact`] for `key=value` text, keeping everything but the secret values as written.
fn redact_conninfo(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    loop {
        while let Some(c) = chars.next_if(|c| c.is_whitespace()) {
            out.push(c);
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        out.push_str(&key);
        while let Some(c) = chars.next_if(|c| c.is_whitespace()) {
            out.push(c);
        }
        if chars.next() != Some('=') {
            return None;
        }
        out.push('=');
        while let Some(c) = chars.next_if(|c| c.is_whitespace()) {
            out.push(c);
        }
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            value.push('\'');
            loop {
                match chars.next()? {
                    '\\' => {
                        value.push('\\');
                        value.push(chars.next()?);
                    }
                    '\'' => {
                        value.push('\'');
                        break;
                    }
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
                if c == '\\' {
                    value.extend(chars.next());
                }
            }
        }
        out.push_str(if is_secret_key(&key) { "***" } else { &value });
    }
}

/// Returns `url` with `replication=database` set, in the same syntax (URL or conninfo).
pub fn with_replication_database(url: &str) -> String {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut pairs: Vec<&str> =
            query.split('&').filter(|p| !p.is_empty() && !p.starts_with("replication=")).collect();
        pairs.push("replication=database");
        format!("{base}?{}", pairs.join("&"))
    } else {
        format!("{url} replication=database")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let p = parse("postgres://al%40ice:p%3Ass@db.example:6543/app?sslmode=require&application_name=x").unwrap();
        assert_eq!(p.host, Host::Tcp("db.example".into()));
        assert_eq!((p.port, p.user.as_str(), p.password.as_deref()), (6543, "al@ice", Some("p:ss")));
        assert_eq!(p.dbname, "app");
        assert_eq!(p.param("sslmode"), Some("require"));
        let p = parse("postgresql://[::1]:5433/d").unwrap();
        assert_eq!((p.host, p.port, p.user.as_str()), (Host::Tcp("::1".into()), 5433, "postgres"));
        let p = parse("postgres:///app?host=/var/run/postgresql&user=u").unwrap();
        assert_eq!((p.host, p.dbname.as_str()), (Host::UnixDir("/var/run/postgresql".into()), "app"));
        let p = parse("postgres://u@h").unwrap();
        assert_eq!((p.port, p.dbname.as_str()), (5432, "u"));
    }

    #[test]
    fn parses_conninfo() {
        let p = parse("host=localhost port=5433 user=me password='a b\\'c' dbname=x sslmode=disable").unwrap();
        assert_eq!((p.port, p.user.as_str(), p.password.as_deref()), (5433, "me", Some("a b'c")));
        assert_eq!((p.dbname.as_str(), p.param("sslmode")), ("x", Some("disable")));
    }

    #[test]
    fn rejects_malformed_strings() {
        for bad in [
            "localhost",
            "postgres://h:0/x",
            "postgres://h:99999/x",
            "postgres://h:x/x",
            "postgres://[::1/x",
            "postgres://h/x?novalue",
            "postgres://h%zz/x",
            "postgres://a,b/x",
            "port=abc",
            "password='unterminated",
            "=x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn conninfo_round_trips() {
        for url in [
            "postgres://al%40ice:p%27s%5Cs@db.example:6543/app?sslmode=require&application_name=a%20b",
            "host=/run/postgresql port=5433 user=me password='a b\\'c' dbname=x",
        ] {
            let p = parse(url).unwrap();
            assert_eq!(parse(&p.to_conninfo()).unwrap(), p, "{url}");
        }
        let mut p = parse("postgres://u@h/d?sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        p.set_param("sslrootcert", None);
        p.set_param("sslmode", Some("require"));
        assert_eq!(p.to_conninfo(), "host='h' port=5432 user='u' dbname='d' sslmode='require'");
    }

    #[test]
    fn passwords_are_redacted_in_both_forms() {
        let cases = [
            ("postgres://u:secret@h:5432/d", "postgres://u:***@h:5432/d"),
            ("postgresql://u@h/d", "postgresql://u@h/d"),
            ("postgres://h/d?password=secret&sslmode=require", "postgres://h/d?password=***&sslmode=require"),
            ("postgres://h/d?sslmode=require&pass%77ord=secret", "postgres://h/d?sslmode=require&pass%77ord=***"),
            ("postgres://u:se/cr@et@h/d?sslpassword=secret", "postgres://u:***@h/d?sslpassword=***"),
            ("postgres://u:pw@h/d?password", "postgres://u:***@h/d?password"),
            ("host=h password=secret user=u", "host=h password=*** user=u"),
            ("host=h password = 'se cr\\'et' user=u", "host=h password = *** user=u"),
            ("password=se\\ cret sslpassword='x'", "password=*** sslpassword=***"),
            ("host=h password='unterminated secret", "(a connection string that does not parse; not shown)"),
            ("just-a-host", "just-a-host"),
        ];
        for (given, shown) in cases {
            assert_eq!(redact(given), shown, "{given}");
            assert!(!redact(given).contains("secret") && !redact(given).contains("cr@et"), "{given}");
        }
    }

    #[test]
    fn parse_errors_never_echo_the_password() {
        for url in ["postgres://u:pa/ss@h/d", "postgres://u:p%zzss@h/d", "postgres://u:p%ffss@h/d"] {
            let err = parse(url).unwrap_err().to_string();
            assert!(!err.contains("ss"), "{url}: {err}");
        }
    }

    #[test]
    fn derives_replication_urls() {
        assert_eq!(with_replication_database("postgres://u@h/d"), "postgres://u@h/d?replication=database");
        assert_eq!(
            with_replication_database("postgres://u@h/d?sslmode=require&replication=true"),
            "postgres://u@h/d?sslmode=require&replication=database"
        );
        assert_eq!(with_replication_database("host=h dbname=d"), "host=h dbname=d replication=database");
        assert_eq!(
            parse(&with_replication_database("postgres://u@h/d")).unwrap().param("replication"),
            Some("database")
        );
    }
}
