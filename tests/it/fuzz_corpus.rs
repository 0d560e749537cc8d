//! Replays every file of `fuzz/corpus/<target>/` through its target, so regressions found by
//! the fuzzer are caught by `cargo test` without it.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        run(&data);
        // Every prefix too: truncated input is the commonest malformation.
        for cut in 0..data.len().min(512) {
            run(&data[..cut]);
        }
        n += 1;
    }
    assert!(n > 0, "empty corpus for {target}");
}

#[test]
fn request_body_corpus() {
    replay("request_body", synchro::fuzzing::request_body);
}

#[test]
fn jwt_corpus() {
    replay("jwt", synchro::fuzzing::jwt);
}

#[test]
fn text_inputs_corpus() {
    replay("text_inputs", synchro::fuzzing::text_inputs);
}

#[test]
fn pgoutput_corpus() {
    replay("pgoutput", synchro::fuzzing::pgoutput);
}

#[test]
fn frame_corpus() {
    replay("frame", synchro::fuzzing::frame);
}

#[cfg(feature = "jwks")]
#[test]
fn jwks_corpus() {
    replay("jwks", synchro::fuzzing::jwks);
}

#[cfg(feature = "jwks")]
#[test]
fn http_response_corpus() {
    replay("http_response", synchro::fuzzing::http_response);
}

#[test]
fn http_head_corpus() {
    replay("http_head", synchro::fuzzing::http_head);
}

#[test]
fn chunked_corpus() {
    replay("chunked", synchro::fuzzing::chunked);
}
