//! One connection's inbound byte stream as a sequence of requests. No I/O: the I/O thread
//! pushes what it read and asks for the next [`Step`].
//!
//! Every limit is applied here, before a worker sees anything: the head limits while the head
//! arrives ([`super::head`]), `MAX_BODY_BYTES` against `Content-Length` before a body byte is
//! read and against each chunk size before it is copied ([`super::chunked`]), and the edge's
//! byte [`Budget`] before bytes are kept. A body over the limit is never read: the request goes
//! on with [`BodyError::TooLarge`] (so the router answers in the contract's order: `401`
//! before `413`), and the connection closes after the response because its remaining bytes are
//! not a request.

use super::budget::{Budget, Reservation};
use super::chunked::{ChunkError, ChunkedDecoder};
use super::head::{parse_head, BodyLength, HeadLimits, HeadScanner, RequestHead, Version};
use super::routes::BodyError;
use super::{ApiError, Reply};

/// The limits one connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct InboundLimits {
    /// Request line and headers.
    pub head: HeadLimits,
    /// Largest body (`MAX_BODY_BYTES`).
    pub max_body: usize,
    /// `Retry-After` seconds when the byte budget is spent.
    pub retry_after: u32,
}

/// Largest first allocation for a body: a `Content-Length` is a claim, not a size to allocate.
const FIRST_BODY_ALLOCATION: usize = 64 * 1024;
/// Larger idle buffers are released rather than kept for the next request.
const KEEP_BUFFER_BYTES: usize = 4096;

/// A complete request, as handed to a worker.
#[derive(Debug)]
pub struct Request {
    head: RequestHead,
    body: Option<Result<Vec<u8>, BodyError>>,
    /// The bytes this request holds against the budget (head and body).
    _held: Reservation,
}

impl Request {
    /// The method as sent.
    pub fn method(&self) -> &str {
        &self.head.method
    }

    /// The request target as sent (path and query).
    pub fn target(&self) -> &str {
        &self.head.target
    }

    /// The path: the target without its query.
    pub fn path(&self) -> &str {
        self.head.target.split('?').next().unwrap_or("")
    }

    /// The protocol version.
    pub fn version(&self) -> Version {
        self.head.version
    }

    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// Every header in order, names lower-cased.
    pub fn headers(&self) -> &[(String, String)] {
        &self.head.headers
    }

    /// The body, or why it was not read ([`BodyError::TooLarge`] over `MAX_BODY_BYTES`).
    pub fn body(&self) -> Result<&[u8], BodyError> {
        match &self.body {
            Some(Ok(b)) => Ok(b),
            Some(Err(e)) => Err(e.clone()),
            None => Ok(&[]),
        }
    }

    /// Takes the body out (the router reads it at most once).
    pub(crate) fn take_body(&mut self) -> Result<Vec<u8>, BodyError> {
        self.body.take().unwrap_or(Ok(Vec::new()))
    }
}

/// What the connection should do next.
#[derive(Debug)]
pub enum Step {
    /// Nothing complete yet: read more.
    NeedMore,
    /// Send `100 Continue`: the client waits for it before sending the body.
    Continue,
    /// A complete request. `close`: the connection ends after its response.
    Request {
        /// The request.
        request: Request,
        /// Whether this is the connection's last request.
        close: bool,
    },
    /// Answer this and close: the stream cannot be read further.
    Refuse(Reply),
}

enum BodyReader {
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
}

enum State {
    /// Waiting for (the rest of) a head.
    Head(HeadScanner),
    /// Reading a body.
    Body { head: Box<RequestHead>, reader: BodyReader, body: Vec<u8>, held: Reservation },
    /// Nothing more is read: the last request was handed out or the stream was refused.
    Done,
}

/// One connection's inbound side.
pub struct Inbound {
    limits: InboundLimits,
    /// Bytes read but not consumed yet.
    buf: Vec<u8>,
    /// Covers `buf.len()`.
    held: Reservation,
    state: State,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound").field("buffered", &self.buf.len()).finish_non_exhaustive()
    }
}

fn refusal(status: u16, message: &str) -> Step {
    Step::Refuse(Reply::error(status, message))
}

impl Inbound {
    /// A connection's inbound side, holding its bytes against `budget`.
    pub fn new(limits: InboundLimits, budget: &Budget) -> Inbound {
        Inbound { limits, buf: Vec::new(), held: budget.empty(), state: State::Head(HeadScanner::new()) }
    }

    /// No byte of a request has arrived since the last one (an idle keep-alive connection).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head(_)) && self.buf.is_empty()
    }

    /// Part of a head has arrived.
    pub fn in_head(&self) -> bool {
        matches!(self.state, State::Head(_)) && !self.buf.is_empty()
    }

    /// A head has arrived and its body is being read.
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Body { .. })
    }

    /// Nothing more will be read from this connection.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Bytes read and not consumed yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Keeps `bytes` for parsing. `false` when the budget cannot hold them: the caller answers
    /// with [`Inbound::overloaded`] and closes.
    pub fn push(&mut self, mut bytes: &[u8]) -> bool {
        if self.is_done() {
            return true; // ignored
        }
        // The common case for bodies: straight into the body, whose bytes are reserved already.
        if let (true, State::Body { reader: BodyReader::Length { remaining }, body, .. }) =
            (self.buf.is_empty(), &mut self.state)
        {
            let n = bytes.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
            body.extend_from_slice(&bytes[..n]);
            *remaining -= n as u64;
            bytes = &bytes[n..];
        }
        if bytes.is_empty() {
            return true;
        }
        if !self.held.grow(bytes.len()) {
            return false;
        }
        self.buf.extend_from_slice(bytes);
        true
    }

    /// The reply for a request the budget could not take.
    pub fn overloaded(&mut self) -> Reply {
        self.state = State::Done;
        ApiError::Unavailable { retry_after: self.limits.retry_after }.reply()
    }

    fn consume(&mut self, n: usize) -> Reservation {
        self.buf.drain(..n);
        if self.buf.is_empty() && self.buf.capacity() > KEEP_BUFFER_BYTES {
            self.buf = Vec::new();
        }
        self.held.split_off(n)
    }

    fn finish(&mut self, head: RequestHead, body: Result<Vec<u8>, BodyError>, held: Reservation) -> Step {
        let close = !head.keep_alive || body.is_err();
        self.state = if close { State::Done } else { State::Head(HeadScanner::new()) };
        Step::Request { request: Request { head, body: Some(body), _held: held }, close }
    }

    /// The next step, consuming buffered bytes.
    pub fn next_step(&mut self) -> Step {
        loop {
            match &mut self.state {
                State::Done => return Step::NeedMore,
                State::Head(scanner) => {
                    if self.buf.is_empty() {
                        return Step::NeedMore;
                    }
                    let len = match scanner.scan(&self.buf, &self.limits.head) {
                        Ok(Some(len)) => len,
                        Ok(None) => return Step::NeedMore,
                        Err(e) => {
                            self.state = State::Done;
                            return refusal(e.status(), &e.to_string());
                        }
                    };
                    let head = match parse_head(&self.buf[..len], &self.limits.head) {
                        Ok(head) => head,
                        Err(e) => {
                            self.state = State::Done;
                            return refusal(e.status(), &e.to_string());
                        }
                    };
                    let mut held = self.consume(len);
                    let reader = match head.body {
                        BodyLength::Empty => return self.finish(head, Ok(Vec::new()), held),
                        BodyLength::Exactly(n) if n > self.limits.max_body as u64 => {
                            return self.finish(head, Err(BodyError::TooLarge), held);
                        }
                        BodyLength::Exactly(n) => {
                            // Reserved in full before the first body byte is read: a request
                            // that cannot be held is refused now, not half-way through.
                            if !held.grow(n as usize) {
                                return Step::Refuse(self.overloaded());
                            }
                            BodyReader::Length { remaining: n }
                        }
                        BodyLength::Chunked => BodyReader::Chunked(ChunkedDecoder::new(self.limits.max_body)),
                    };
                    let first = match reader {
                        BodyReader::Length { remaining } => (remaining as usize).min(FIRST_BODY_ALLOCATION),
                        BodyReader::Chunked(_) => 0,
                    };
                    let expects_continue = head.expects_continue && self.buf.is_empty();
                    self.state = State::Body { head: Box::new(head), reader, body: Vec::with_capacity(first), held };
                    if expects_continue {
                        return Step::Continue;
                    }
                }
                State::Body { reader: BodyReader::Length { remaining }, body, .. } => {
                    let n = self.buf.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    if n > 0 {
                        body.extend_from_slice(&self.buf[..n]);
                        *remaining -= n as u64;
                        drop(self.consume(n));
                    }
                    let State::Body { reader: BodyReader::Length { remaining }, .. } = &self.state else {
                        unreachable!("matched above")
                    };
                    if *remaining > 0 {
                        return Step::NeedMore;
                    }
                    return self.complete_body();
                }
                State::Body { reader: BodyReader::Chunked(decoder), body, held, .. } => {
                    if self.buf.is_empty() {
                        return Step::NeedMore;
                    }
                    // Reserve what this input could add before decoding it.
                    let room = self.limits.max_body.saturating_sub(body.len()).min(self.buf.len());
                    if !held.grow(room) {
                        return Step::Refuse(self.overloaded());
                    }
                    let before = body.len();
                    let result = decoder.decode(&self.buf, body);
                    let done = decoder.is_done();
                    // Keep only what the body took.
                    held.resize(held.bytes() - room + (body.len() - before));
                    match result {
                        Ok(n) => drop(self.consume(n)),
                        Err(ChunkError::TooLarge { .. }) => {
                            let State::Body { head, held, .. } = std::mem::replace(&mut self.state, State::Done) else {
                                unreachable!("matched above")
                            };
                            return self.finish(*head, Err(BodyError::TooLarge), held);
                        }
                        Err(e @ ChunkError::Malformed { .. }) => {
                            self.state = State::Done;
                            return refusal(400, &e.to_string());
                        }
                    }
                    if !done {
                        return Step::NeedMore;
                    }
                    return self.complete_body();
                }
            }
        }
    }

    fn complete_body(&mut self) -> Step {
        let State::Body { head, body, held, .. } = std::mem::replace(&mut self.state, State::Done) else {
            return Step::NeedMore;
        };
        self.finish(*head, Ok(body), held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> InboundLimits {
        InboundLimits { head: HeadLimits { max_bytes: 512, max_headers: 8 }, max_body: 100, retry_after: 3 }
    }

    /// Feeds `input` in pieces of `step` bytes and collects every step but `NeedMore`.
    fn run(inbound: &mut Inbound, input: &[u8], step: usize) -> Vec<Step> {
        let mut steps = Vec::new();
        for piece in input.chunks(step.max(1)) {
            assert!(inbound.push(piece));
            loop {
                match inbound.next_step() {
                    Step::NeedMore => break,
                    s => steps.push(s),
                }
            }
        }
        steps
    }

    fn describe(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::NeedMore => "more".to_string(),
                Step::Continue => "continue".to_string(),
                Step::Request { request, close } => format!(
                    "{} {} {:?} close={close}",
                    request.method(),
                    request.target(),
                    request.body().map(|b| String::from_utf8_lossy(b).into_owned())
                ),
                Step::Refuse(reply) => format!("refuse {}", reply.status),
            })
            .collect()
    }

    #[test]
    fn pipelined_requests_in_any_split() {
        let input = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
            POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
            GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\n";
        let want = vec![
            "GET /a Ok(\"\") close=false",
            "POST /b Ok(\"abc\") close=false",
            "POST /c Ok(\"hi\") close=false",
            "GET /d Ok(\"\") close=true",
        ];
        for step in [1, 2, 3, 7, 64, input.len()] {
            let budget = Budget::new(1 << 20);
            let mut inbound = Inbound::new(limits(), &budget);
            let steps = run(&mut inbound, input, step);
            assert_eq!(describe(&steps), want, "step {step}");
            assert!(inbound.is_done());
            drop(steps);
            drop(inbound);
            assert_eq!(budget.used(), 0, "every byte returned");
        }
    }

    #[test]
    fn bodies_over_the_limit_are_never_read() {
        let budget = Budget::new(1 << 20);
        let mut inbound = Inbound::new(limits(), &budget);
        let steps =
            run(&mut inbound, b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n\r\nxxxx", 64);
        assert_eq!(describe(&steps), ["POST /p Err(TooLarge) close=true"]);
        assert!(inbound.is_done());
        drop((steps, inbound));
        assert_eq!(budget.used(), 0);
        let mut inbound = Inbound::new(limits(), &budget);
        let head = b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let steps = run(&mut inbound, &[&head[..], b"50\r\n", &[b'a'; 80], b"\r\n30\r\n"].concat(), 5);
        assert_eq!(describe(&steps), ["POST /p Err(TooLarge) close=true"], "the second chunk would pass 100 bytes");
        drop(steps);
        drop(inbound);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn expect_continue_only_when_the_body_is_wanted() {
        let budget = Budget::new(1 << 20);
        let mut inbound = Inbound::new(limits(), &budget);
        let head = b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(describe(&run(&mut inbound, head, head.len())), ["continue"]);
        assert_eq!(describe(&run(&mut inbound, b"ok", 2)), ["POST /p Ok(\"ok\") close=false"]);
        // Over the limit: no 100 Continue, the request goes on without its body.
        let head = b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n";
        assert_eq!(describe(&run(&mut inbound, head, head.len())), ["POST /p Err(TooLarge) close=true"]);
        // The body already came with the head: no interim response needed.
        let mut inbound = Inbound::new(limits(), &budget);
        let input = b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(describe(&run(&mut inbound, input, input.len())), ["POST /p Ok(\"ok\") close=false"]);
    }

    #[test]
    fn refusals_end_the_stream() {
        for (input, status) in [
            (&b"GET / HTTP/1.1\nHost: x\n\n"[..], 400),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\nA: b\r\nA: b\r\nA: b\r\nA: b\r\nA: b\r\nA: b\r\nA: b\r\n\r\n", 431),
        ] {
            let budget = Budget::new(1 << 20);
            let mut inbound = Inbound::new(limits(), &budget);
            let steps = run(&mut inbound, input, 3);
            assert_eq!(describe(&steps), [format!("refuse {status}")], "{:?}", String::from_utf8_lossy(input));
            assert!(inbound.is_done());
            if let Step::Refuse(reply) = &steps[0] {
                assert!(String::from_utf8_lossy(&reply.body).starts_with("{\"error\":"), "a JSON error body");
            }
        }
    }

    #[test]
    fn the_budget_is_reserved_before_bytes_are_kept() {
        let budget = Budget::new(120);
        let mut inbound = Inbound::new(limits(), &budget);
        let head = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";
        assert!(inbound.push(head));
        // The head (50 bytes) plus a declared 100-byte body do not fit 120 bytes.
        match inbound.next_step() {
            Step::Refuse(reply) => {
                assert_eq!(reply.status, 503);
                assert_eq!(reply.headers, vec![("Retry-After", "3".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        drop(inbound);
        assert_eq!(budget.used(), 0);
        let mut inbound = Inbound::new(limits(), &budget);
        assert!(!inbound.push(&[b'G'; 121]), "more than the budget is never kept");
        assert_eq!(inbound.overloaded().status, 503);
    }

    #[test]
    fn idle_head_and_body_states() {
        let budget = Budget::new(1 << 20);
        let mut inbound = Inbound::new(limits(), &budget);
        assert!(inbound.is_idle() && !inbound.in_head() && !inbound.in_body());
        run(&mut inbound, b"POST / HTTP/1.1\r\nHo", 100);
        assert!(inbound.in_head() && !inbound.is_idle());
        run(&mut inbound, b"st: x\r\nContent-Length: 5\r\n\r\nab", 100);
        assert!(inbound.in_body());
        assert_eq!(describe(&run(&mut inbound, b"cde", 100)), ["POST / Ok(\"abcde\") close=false"]);
        assert!(inbound.is_idle());
        assert_eq!(inbound.buffered(), 0);
    }
}
