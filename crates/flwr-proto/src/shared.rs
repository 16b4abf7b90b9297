//! Encoding a message as a list of chunks in which large `bytes` fields are the message's own
//! buffers, not copies.
//!
//! A TaskIns carrying a model of hundreds of MiB is held once by the SuperLink; encoding it
//! for every node that pulls it would copy the model into one buffer per response. prost writes
//! a `Bytes` field with `BufMut::put(bytes.clone())`, so a buffer that takes such a `put` as a
//! chunk of its own (instead of copying it) yields the same bytes as `encode_to_vec` in pieces
//! that share the payloads: the response then costs the message's small fields, not its size.

use prost::bytes::buf::UninitSlice;
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};

/// Byte fields at least this long are shared; shorter ones are copied into the surrounding
/// chunk, where a separate chunk would cost more than the copy.
pub const SHARED_MIN: usize = 64 * 1024;

/// `message` encoded as prost encodes it, in chunks whose concatenation is `encode_to_vec`;
/// every `bytes` field of at least [`SHARED_MIN`] bytes is a chunk of its own that shares the
/// field's buffer.
pub fn encode_shared(message: &impl prost::Message) -> Vec<Bytes> {
    let mut writer = ChunkWriter {
        done: Vec::new(),
        current: BytesMut::new(),
    };
    // The writer never runs out of room (as `BytesMut`), so encoding cannot fail.
    if message.encode(&mut writer).is_err() {
        return vec![Bytes::from(message.encode_to_vec())];
    }
    writer.flush();
    writer.done
}

/// The pieces written so far and the one being written.
#[derive(Debug)]
struct ChunkWriter {
    done: Vec<Bytes>,
    current: BytesMut,
}

impl ChunkWriter {
    fn flush(&mut self) {
        if !self.current.is_empty() {
            self.done.push(self.current.split().freeze());
        }
    }
}

// SAFETY: the three required methods delegate to `current`, a `BytesMut`, unchanged, so the
// writer upholds `BufMut`'s contract exactly as `BytesMut` does: `chunk_mut` returns the spare
// capacity of `current`, and `advance_mut(cnt)` is called by prost only for bytes it wrote into
// that chunk. `put` and `put_slice` only call safe methods.
#[allow(unsafe_code)]
unsafe impl BufMut for ChunkWriter {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's promise (the first `cnt` bytes of `chunk_mut` are initialised)
        // is about `current`'s chunk, which is what `chunk_mut` returned.
        unsafe { self.current.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.current.chunk_mut()
    }

    fn put<T: Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        let len = src.remaining();
        if len >= SHARED_MIN {
            self.flush();
            // For `Bytes` (prost's `bytes` fields) this is a reference-counted slice, not a copy.
            self.done.push(src.copy_to_bytes(len));
        } else {
            self.current.put(src);
        }
    }

    fn put_slice(&mut self, src: &[u8]) {
        self.current.put_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::Message as _;

    use super::*;
    use crate::{Array, ParametersRecord, PullTaskInsResponse, RecordSet, Task, TaskIns};

    fn response(payloads: &[Bytes]) -> PullTaskInsResponse {
        let task_ins_list = payloads
            .iter()
            .enumerate()
            .map(|(index, data)| TaskIns {
                task_id: format!("task-{index}"),
                run_id: 7,
                task: Some(Task {
                    ttl: 30.0,
                    ancestry: vec!["a".to_owned()],
                    recordset: Some(RecordSet {
                        parameters: HashMap::from([(
                            "model".to_owned(),
                            ParametersRecord {
                                data_keys: vec!["w".to_owned(), "b".to_owned()],
                                data_values: vec![
                                    Array {
                                        dtype: "float32".to_owned(),
                                        shape: vec![3, -1],
                                        stype: "numpy.ndarray".to_owned(),
                                        data: data.clone(),
                                    },
                                    Array {
                                        data: Bytes::from_static(b"small"),
                                        ..Array::default()
                                    },
                                ],
                            },
                        )]),
                        ..RecordSet::default()
                    }),
                    ..Task::default()
                }),
                ..TaskIns::default()
            })
            .collect();
        PullTaskInsResponse {
            reconnect: None,
            task_ins_list,
        }
    }

    #[test]
    fn chunks_are_prosts_encoding_and_large_payloads_are_shared() {
        let big = Bytes::from(vec![7_u8; SHARED_MIN + 1]);
        let also_big = Bytes::from(vec![9_u8; 3 * SHARED_MIN]);
        let message = response(&[big.clone(), also_big.clone()]);
        let chunks = encode_shared(&message);
        assert_eq!(chunks.concat(), message.encode_to_vec());
        let shared: Vec<&Bytes> = chunks
            .iter()
            .filter(|chunk| chunk.len() >= SHARED_MIN)
            .collect();
        assert_eq!(shared.len(), 2);
        assert_eq!(shared[0].as_ptr(), big.as_ptr());
        assert_eq!(shared[1].as_ptr(), also_big.as_ptr());
        assert_eq!(
            PullTaskInsResponse::decode(chunks.concat().as_slice()).ok(),
            Some(message)
        );
    }

    #[test]
    fn small_messages_are_one_chunk() {
        let message = response(&[Bytes::from_static(b"tiny")]);
        let chunks = encode_shared(&message);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks.concat(), message.encode_to_vec());
        assert!(encode_shared(&PullTaskInsResponse::default()).is_empty());
    }
}
