//! Encode and decode throughput of a 200-byte PUSH frame in each body encoding (frames/s and
//! bytes/s). Run with `cargo bench -p galopush-protocol --bench codec`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use galopush_protocol::frame::{self, Frame};
use galopush_protocol::message::Down;
use galopush_protocol::{DEFAULT_MAX_BODY, Encoding};

/// A PUSH whose body (offline, flag, message) is 200 bytes.
fn push(encoding: Encoding) -> Frame<Down> {
    let msg: Vec<u8> = (0..197u8).map(|i| b'a' + i % 26).collect();
    Frame::new(
        encoding,
        0x0102_0304,
        Down::Push {
            offline: 0,
            flag: 1,
            msg: Bytes::from(msg),
        },
    )
}

fn codec(c: &mut Criterion) {
    for encoding in Encoding::ALL {
        let frame = push(encoding);
        let wire = frame.to_bytes().expect("encodes");
        let mut group = c.benchmark_group(format!("push200/{encoding:?}"));
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: wire.len() as u64,
        });
        let mut out = BytesMut::with_capacity(4096);
        group.bench_function("encode", |b| {
            b.iter(|| {
                out.clear();
                black_box(&frame).encode(&mut out).expect("encodes");
                black_box(out.len())
            })
        });
        group.bench_function("decode", |b| {
            b.iter(|| {
                let mut src = BytesMut::from(&black_box(&wire)[..]);
                frame::decode::<Down>(&mut src, DEFAULT_MAX_BODY)
                    .expect("decodes")
                    .expect("whole")
            })
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
