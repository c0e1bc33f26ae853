//! Seeded robustness runs of the parsers that read outside input — a target's HTTP/1 answers
//! and the config file — through the same entry points the cargo-fuzz targets in `fuzz/`
//! use: known inputs give known results, and thousands of mutations of them never panic
//! (and, for answers, mean the same however they are cut into reads).

use switchyard::upstream::fuzz::{answer, read, Answer};

const ANSWERS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n1\r\n!\r\n0\r\nx-sum: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nto the close",
    b"HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
];

#[test]
fn known_answers_read_as_expected_in_any_pieces() {
    for step in [1, 2, 3, 7, 64, usize::MAX] {
        let got = |i: usize| read(ANSWERS[i], step, false);
        let body = |i: usize| match got(i) {
            Answer::Complete { status, body, .. } => (status, String::from_utf8(body).unwrap()),
            Answer::Failed => panic!("answer {i} failed in pieces of {step}"),
        };
        assert_eq!(body(0), (200, "hello".into()));
        assert_eq!(body(1), (200, "hello!".into()));
        match got(1) {
            Answer::Complete { trailers, .. } => assert_eq!(trailers.unwrap()["x-sum"], "1"),
            Answer::Failed => unreachable!(),
        }
        assert_eq!(body(2), (201, "ok".into()));
        assert_eq!(body(3), (200, "to the close".into()));
        assert_eq!(body(4), (204, String::new()));
        assert_eq!(body(5), (200, "abc".into()));
    }
    assert_eq!(
        read(
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort",
            4,
            false
        ),
        Answer::Failed
    );
    assert_eq!(read(b"garbage\r\n\r\n", 1, false), Answer::Failed);
    // A transfer coding besides chunked can be neither decoded nor passed on (RFC 9112 §6.1).
    assert_eq!(
        read(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            usize::MAX,
            false
        ),
        Answer::Failed
    );
    match read(ANSWERS[0], 3, true) {
        Answer::Complete { body, .. } => assert!(body.is_empty(), "HEAD has no body"),
        Answer::Failed => panic!("HEAD answer failed"),
    }
}

/// A random change: flip, insert, delete, duplicate a span, or cut the end off.
fn mutate(rng: &mut fastrand::Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.usize(1..4) {
        let at = rng.usize(0..=v.len());
        match rng.u8(0..5) {
            0 if at < v.len() => v[at] ^= 1 << rng.u8(0..8),
            1 => v.insert(at, *b"\r\n0:;x 9fF\t".get(rng.usize(0..11)).unwrap()),
            2 if at < v.len() => {
                v.remove(at);
            }
            3 if at < v.len() => {
                let end = rng.usize(at..=v.len());
                let span = v[at..end].to_vec();
                v.splice(at..at, span);
            }
            _ => v.truncate(at),
        }
    }
    v
}

#[test]
fn mutated_answers_never_panic_and_read_the_same_in_pieces() {
    let mut rng = fastrand::Rng::with_seed(0x5717c4);
    for i in 0..100_000 {
        let seed = ANSWERS[i % ANSWERS.len()];
        let mut data = vec![rng.u8(..)];
        data.extend(mutate(&mut rng, seed));
        answer(&data);
    }
}

#[test]
fn mutated_configs_never_panic_and_point_into_the_text() {
    let example = std::fs::read("examples/switchyard.toml").expect("the example config");
    switchyard::config::fuzz(&example);
    let mut rng = fastrand::Rng::with_seed(0xc0f1);
    for _ in 0..4_000 {
        switchyard::config::fuzz(&mutate(&mut rng, &example));
    }
}
