use super::*;
use crate::codec::ByteStr;
use crate::types::QoS;
use crate::PublishProperties;

fn entry(i: u32) -> Entry {
    Entry {
        at_ms: 1_000 + i as u64,
        client: (i % 3) as u16,
        publish: Publish {
            topic: ByteStr::from(format!("t/{i}").as_str()),
            payload: format!("payload {i}").into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: i.is_multiple_of(2),
            pkid: (i % 60_000 + 1) as u16,
            properties: Some(Box::new(PublishProperties {
                content_type: Some("text/plain".into()),
                user_properties: vec![("i".into(), i.to_string())],
                ..Default::default()
            })),
        },
    }
}

fn dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "mqlink-seglog-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&d);
    d
}

fn read_all(log: &Log) -> Vec<(u64, Entry)> {
    let mut r = log.reader(log.confirmed());
    let mut out = Vec::new();
    while let Some(e) = r.next(log.next_seq()).unwrap() {
        out.push(e);
    }
    out
}

fn segments(d: &Path) -> Vec<PathBuf> {
    segment_files(d)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[test]
fn crc32c_known_value() {
    // RFC 3720's check value for "123456789".
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn replays_what_is_not_confirmed_and_cuts_a_torn_tail() {
    let d = dir();
    {
        let mut log = Log::open(&d, 1 << 30).unwrap();
        let batch: Vec<Entry> = (0..10).map(entry).collect();
        assert_eq!(log.append(&batch, true).unwrap(), 0);
        log.confirm(4).unwrap();
    }
    // A crash mid-write leaves half an entry.
    let seg = segments(&d).pop().unwrap();
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&[40, 0, 0, 0, 1, 2])
        .unwrap();
    let mut log = Log::open(&d, 1 << 30).unwrap();
    assert_eq!(log.cut(), 1);
    let got = read_all(&log);
    assert_eq!(
        got.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
        (4..10).collect::<Vec<_>>()
    );
    assert_eq!(got[0].1, entry(4), "every field comes back");
    assert_eq!(log.append(&[entry(10)], false).unwrap(), 10);
    log.confirm(11).unwrap();
    drop(log);
    let log = Log::open(&d, 1 << 30).unwrap();
    assert!(read_all(&log).is_empty());
    assert_eq!(log.entries(), 0);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_bad_crc_at_the_tail_is_cut_never_read() {
    let d = dir();
    {
        let mut log = Log::open(&d, 1 << 30).unwrap();
        log.append(&(0..5).map(entry).collect::<Vec<_>>(), false)
            .unwrap();
    }
    // Flip a payload byte of the last entry: whole length, wrong CRC.
    let seg = segments(&d).pop().unwrap();
    let mut data = fs::read(&seg).unwrap();
    let n = data.len();
    data[n - 3] ^= 0xff;
    fs::write(&seg, &data).unwrap();
    // Then garbage that claims to be a long entry.
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&[0xff; 64])
        .unwrap();
    let log = Log::open(&d, 1 << 30).unwrap();
    let got = read_all(&log);
    assert_eq!(got.len(), 4, "the corrupt entry and the garbage are cut");
    assert_eq!(got[3].1, entry(3));
    assert!(fs::metadata(&seg).unwrap().len() < n as u64);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn confirmed_segments_are_deleted_and_a_second_process_is_refused() {
    let d = dir();
    // 16 KiB limit: 4 KiB segments.
    let mut log = Log::open(&d, 16 * 1024).unwrap();
    assert!(Log::open(&d, 16 * 1024).is_err(), "the directory is locked");
    for i in 0..400 {
        log.append(&[entry(i)], false).unwrap();
    }
    let before = segments(&d).len();
    assert!(before > 3, "{before} segments");
    let bytes = log.bytes();
    log.confirm(300).unwrap();
    let after = segments(&d).len();
    assert!(
        after < before && log.bytes() < bytes,
        "{before} → {after} segments"
    );
    let got = read_all(&log);
    assert_eq!(got.first().map(|e| e.0), Some(300));
    assert_eq!(got.len(), 100);
    log.confirm(400).unwrap();
    // The last segment stays, all confirmed: it tells what the broker may
    // send again after a crash (within one segment's bytes).
    assert_eq!(
        segments(&d).len(),
        1,
        "a confirmed log keeps its last segment"
    );
    assert!(
        log.bytes() > 0 && log.bytes() <= 8 * 1024,
        "{}",
        log.bytes()
    );
    assert!(read_all(&log).is_empty());
    let mut last = log.reader(log.first_seq());
    assert!(
        last.next(log.next_seq()).unwrap().is_some(),
        "still readable"
    );
    // One batch bigger than the limit: all confirmed, it goes too.
    let big: Vec<Entry> = (400..1000).map(entry).collect();
    assert_eq!(log.append(&big, false).unwrap(), 400);
    assert!(log.bytes() > 16 * 1024, "{}", log.bytes());
    log.confirm(1000).unwrap();
    assert_eq!(log.bytes(), 0);
    assert_eq!(log.append(&[entry(1000)], false).unwrap(), 1000);
    drop(log);
    let log = Log::open(&d, 16 * 1024).unwrap();
    assert_eq!(log.entries(), 1);
    assert_eq!(read_all(&log), vec![(1000, entry(1000))]);
    drop(log);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_reader_follows_the_writer_across_segments_and_restarts() {
    let d = dir();
    let mut log = Log::open(&d, 16 * 1024).unwrap();
    let mut r = log.reader(0);
    let mut seen = 0u32;
    for i in 0..300 {
        log.append(&[entry(i)], false).unwrap();
        if i % 7 == 0 {
            while let Some((seq, e)) = r.next(log.next_seq()).unwrap() {
                assert_eq!((seq, &e), (seen as u64, &entry(seen)));
                seen += 1;
            }
        }
    }
    while let Some((_, e)) = r.next(log.next_seq()).unwrap() {
        assert_eq!(e, entry(seen));
        seen += 1;
    }
    assert_eq!(seen, 300);
    log.confirm(150).unwrap();
    drop(log);
    // After a restart the reader starts at the confirmed entry.
    let log = Log::open(&d, 16 * 1024).unwrap();
    let got = read_all(&log);
    assert_eq!(got.len(), 150);
    assert_eq!(got[0], (150, entry(150)));
    fs::remove_dir_all(&d).unwrap();
}

/// Replay streams: a log far bigger than any read buffer is read back
/// whole while the reader holds one entry (its buffer's capacity stays
/// the size of the largest entry).
#[test]
fn replay_streams_in_bounded_memory() {
    let d = dir();
    let mut log = Log::open(&d, 1 << 30).unwrap();
    let big = Entry {
        publish: Publish {
            payload: vec![7u8; 64 * 1024].into(),
            ..entry(0).publish
        },
        ..entry(0)
    };
    for _ in 0..40 {
        log.append(&vec![big.clone(); 16], false).unwrap();
    }
    drop(log);
    let log = Log::open(&d, 1 << 30).unwrap();
    assert!(log.bytes() > 40 << 20);
    let mut r = log.reader(0);
    let mut n = 0;
    while let Some((_, e)) = r.next(log.next_seq()).unwrap() {
        assert_eq!(e.publish.payload.len(), 64 * 1024);
        n += 1;
        assert!(r.buf.capacity() < 128 * 1024, "{}", r.buf.capacity());
    }
    assert_eq!(n, 640);
    fs::remove_dir_all(&d).unwrap();
}
