//! A seeded, stable run of every fuzz target (`switchyard::fuzz::TARGETS`, the targets of
//! `fuzz/`): the committed seed corpus of each (`fuzz/corpus/<target>/`) and thousands of
//! mutations of it from a fixed seed, through the same entry points the coverage-guided
//! fuzzer drives. An entry point panics when a property of the real parser breaks, and that
//! fails the run, naming the target and the input. Known HTTP/1 answers also read as
//! expected, whole and in pieces.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use switchyard::fuzz::{read_answer, Answer, Pieces, TARGETS};

/// Mutations tried per target, on top of its seeds: fewer for the config targets, each of
/// whose inputs is a whole file parsed twice and validated (milliseconds in a debug build).
fn mutations(target: &str) -> usize {
    match target {
        "config" => 600,
        "config_line" => 300,
        _ => 3_000,
    }
}

/// A random change: flip, insert, delete, duplicate a span, or cut the end off.
fn mutate(rng: &mut fastrand::Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.usize(1..4) {
        let at = rng.usize(0..=v.len());
        match rng.u8(0..6) {
            0 if at < v.len() => v[at] ^= 1 << rng.u8(0..8),
            1 => v.insert(at, b"\r\n0:;x 9fF\t*?%=&\"[{\xff"[rng.usize(0..19)]),
            2 if at < v.len() => {
                v.remove(at);
            }
            3 if at < v.len() => {
                let end = rng.usize(at..=v.len());
                let span = v[at..end].to_vec();
                v.splice(at..at, span);
            }
            4 if at < v.len() => v[at] = rng.u8(..),
            _ => v.truncate(at),
        }
    }
    v
}

/// The seed corpus of `target`, in file-name order.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|f| f.expect("a corpus entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).expect("a seed file"))
        .collect()
}

/// Runs `entry` over `seeds` and `mutations` mutations of them; the first input that
/// panics is the error, shown as an escaped byte string.
fn seeded_run(entry: fn(&[u8]), seeds: &[Vec<u8>], mutations: usize) -> Result<usize, String> {
    assert!(!seeds.is_empty(), "no seeds to start from");
    let mut rng = fastrand::Rng::with_seed(0x0057_17c4);
    let inputs = seeds.iter().cloned().chain((0..mutations).map(|i| {
        let mut seed = seeds[i % seeds.len()].clone();
        // Now and then two seeds spliced, so that parts meet that no single seed has.
        if rng.u8(0..4) == 0 {
            let other = &seeds[rng.usize(0..seeds.len())];
            seed.truncate(rng.usize(0..=seed.len()));
            seed.extend_from_slice(&other[rng.usize(0..=other.len())..]);
        }
        mutate(&mut rng, &seed)
    }));
    let mut ran = 0;
    for input in inputs {
        if catch_unwind(AssertUnwindSafe(|| entry(&input))).is_err() {
            return Err(format!("panicked on b\"{}\"", input.escape_ascii()));
        }
        ran += 1;
    }
    Ok(ran)
}

#[test]
fn every_fuzz_target_survives_its_seeds_and_thousands_of_mutations() {
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    for (name, entry) in TARGETS {
        let t = std::time::Instant::now();
        match seeded_run(*entry, &seeds(name), mutations(name)) {
            Ok(n) => assert!(n > mutations(name), "{name} ran {n} inputs"),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
        println!("{name}: {:?}", t.elapsed());
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    println!("{} targets in {:?}", TARGETS.len(), started.elapsed());
}

#[test]
fn a_seeded_run_fails_on_the_first_input_that_panics_and_names_it() {
    fn fussy(data: &[u8]) {
        assert!(!data.contains(&b'!'), "a bang");
    }
    let err = seeded_run(fussy, &[b"ab".to_vec(), b"cd!".to_vec()], 10).unwrap_err();
    assert_eq!(err, "panicked on b\"cd!\"");
    assert_eq!(seeded_run(fussy, &[b"ab".to_vec()], 10), Ok(11));
}

const ANSWERS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n1\r\n!\r\n0\r\nx-sum: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nto the close",
    b"HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
];

#[test]
fn known_answers_read_by_the_real_client_as_expected_in_any_pieces() {
    for step in [1, 2, 3, 7, 64, usize::MAX] {
        for stall in [false, true] {
            let pieces = Pieces { step, stall };
            let got = |i: usize| read_answer(ANSWERS[i], pieces, false);
            let body = |i: usize| match got(i) {
                Answer::Complete { status, body, .. } => (status, String::from_utf8(body).unwrap()),
                Answer::Failed => panic!("answer {i} failed in {pieces:?}"),
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
    }
    let cut = Pieces {
        step: 4,
        stall: true,
    };
    let short = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort";
    assert_eq!(read_answer(short, cut, false), Answer::Failed);
    assert_eq!(read_answer(b"garbage\r\n\r\n", cut, false), Answer::Failed);
    // A transfer coding besides chunked can be neither decoded nor passed on (RFC 9112 §6.1).
    let gzip = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(read_answer(gzip, Pieces::WHOLE, false), Answer::Failed);
    match read_answer(ANSWERS[0], cut, true) {
        Answer::Complete { body, .. } => assert!(body.is_empty(), "HEAD has no body"),
        Answer::Failed => panic!("HEAD answer failed"),
    }
}
