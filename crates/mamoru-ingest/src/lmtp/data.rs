//! The DATA body without I/O: bytes in, the message to deliver out.
//!
//! [`DataReader`] undoes dot-stuffing, finds the `CRLF.CRLF` terminator
//! across any read boundary (a bare LF is tolerated as a line ending),
//! normalises line endings to CRLF and enforces the size limit. What it hands
//! on is a [`DataBody`]: the complete message, or only the size of one that
//! was too big.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataState {
    /// At the start of a line (right after DATA, or after a line ending).
    LineStart,
    /// A line started with `.`.
    Dot,
    /// A line started with `.\r`.
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, just after a `\r`.
    Cr,
}

/// Progress of [`DataReader::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProgress {
    /// All input was consumed and the terminator has not been seen yet.
    NeedMore,
    /// The terminator ended at `input[consumed - 1]`; the rest of the input
    /// belongs to the next (pipelined) command.
    Done { consumed: usize },
}

/// The body of a finished DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataBody {
    /// Dot-unstuffed, every line ending normalised to CRLF.
    Complete(Vec<u8>),
    /// Over the limit; `size` is how large it was, the bytes are gone.
    TooBig { size: u64 },
}

/// Accumulates a DATA body: undoes dot-stuffing, finds the terminating
/// `CRLF.CRLF` across any read boundary, accepts bare LF as a line ending
/// (clients do send it) and normalises line endings to CRLF. Past the size
/// limit it keeps reading to the terminator but stops storing, so the
/// connection stays in step and can answer 552.
#[derive(Debug)]
pub struct DataReader {
    state: DataState,
    body: Vec<u8>,
    size: u64,
    max: u64,
    done: bool,
}

impl DataReader {
    pub fn new(max: u64) -> Self {
        Self { state: DataState::LineStart, body: Vec::new(), size: 0, max, done: false }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.size <= self.max {
            self.body.extend_from_slice(bytes);
        } else if !self.body.is_empty() {
            self.body = Vec::new();
        }
    }

    /// Is the body already over the limit?
    pub fn too_big(&self) -> bool {
        self.size > self.max
    }

    /// Consumes input up to and including the terminator.
    pub fn feed(&mut self, input: &[u8]) -> DataProgress {
        if self.done {
            return DataProgress::Done { consumed: 0 };
        }
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            match self.state {
                DataState::LineStart => match b {
                    b'.' => self.state = DataState::Dot,
                    _ => self.mid(b),
                },
                DataState::Dot => match b {
                    b'\r' => self.state = DataState::DotCr,
                    b'\n' => return self.finish_at(i),
                    // Dot-stuffing: the leading dot is dropped, the rest kept.
                    _ => self.mid(b),
                },
                DataState::DotCr => match b {
                    b'\n' => return self.finish_at(i),
                    _ => {
                        self.state = DataState::Mid;
                        self.cr_then(b);
                    }
                },
                DataState::Mid => {
                    // Fast path: copy the run of ordinary bytes at once.
                    let start = i - 1;
                    let run = input[start..].iter().position(|&c| c == b'\r' || c == b'\n').unwrap_or(input.len() - start);
                    if run > 0 {
                        self.emit(&input[start..start + run]);
                        i = start + run;
                    } else {
                        self.mid(b);
                    }
                }
                DataState::Cr => self.cr_then(b),
            }
        }
        DataProgress::NeedMore
    }

    fn finish_at(&mut self, consumed: usize) -> DataProgress {
        self.done = true;
        DataProgress::Done { consumed }
    }

    /// A byte inside a line (or the first byte of a line that is not a dot).
    fn mid(&mut self, b: u8) {
        match b {
            b'\r' => self.state = DataState::Cr,
            b'\n' => {
                self.emit(b"\r\n");
                self.state = DataState::LineStart;
            }
            _ => {
                self.emit(&[b]);
                self.state = DataState::Mid;
            }
        }
    }

    /// The byte after a pending `\r`.
    fn cr_then(&mut self, b: u8) {
        match b {
            b'\n' => {
                self.emit(b"\r\n");
                self.state = DataState::LineStart;
            }
            // A bare CR is kept as it came; the next one may end the line.
            b'\r' => {
                self.emit(b"\r");
                self.state = DataState::Cr;
            }
            _ => {
                self.emit(&[b'\r', b]);
                self.state = DataState::Mid;
            }
        }
    }

    /// The body, once [`DataReader::feed`] returned `Done`.
    pub fn finish(self) -> DataBody {
        if self.too_big() { DataBody::TooBig { size: self.size } } else { DataBody::Complete(self.body) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in the given pieces; returns the body and the bytes
    /// consumed in total.
    fn read_data(pieces: &[&[u8]], max: u64) -> (DataBody, usize) {
        let mut r = DataReader::new(max);
        let mut consumed = 0;
        for piece in pieces {
            match r.feed(piece) {
                DataProgress::NeedMore => consumed += piece.len(),
                DataProgress::Done { consumed: n } => {
                    return (r.finish(), consumed + n);
                }
            }
        }
        panic!("terminator not found in {pieces:?}");
    }

    #[test]
    fn dot_unstuffing_and_terminator() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n..\r\nend\r\n.\r\nQUIT\r\n";
        let (body, consumed) = read_data(&[input], 1000);
        assert_eq!(body, DataBody::Complete(b"Subject: x\r\n\r\n.leading dot\r\n.\r\nend\r\n".to_vec()));
        assert_eq!(&input[consumed..], b"QUIT\r\n");
    }

    #[test]
    fn empty_body() {
        let (body, consumed) = read_data(&[b".\r\nNOOP"], 1000);
        assert_eq!(body, DataBody::Complete(Vec::new()));
        assert_eq!(consumed, 3);
    }

    #[test]
    fn bare_lf_is_tolerated_and_normalised() {
        let (body, consumed) = read_data(&[b"a\nb\r\n..c\n.\nrest"], 1000);
        assert_eq!(body, DataBody::Complete(b"a\r\nb\r\n.c\r\n".to_vec()));
        assert_eq!(consumed, 11);
        let (body, _) = read_data(&[b"a\r\n.\n"], 1000);
        assert_eq!(body, DataBody::Complete(b"a\r\n".to_vec()));
    }

    #[test]
    fn dots_that_do_not_terminate() {
        // A dot in the middle of a line, a dot line with text, a bare CR.
        let (body, _) = read_data(&[b"a.b\r\n.x\r\n. \r\nc\rd\r\r\n.\r\n"], 1000);
        assert_eq!(body, DataBody::Complete(b"a.b\r\nx\r\n \r\nc\rd\r\r\n".to_vec()));
        // `.\r` followed by something other than LF is an ordinary line.
        let (body, _) = read_data(&[b".\rz\r\n.\r\n"], 1000);
        assert_eq!(body, DataBody::Complete(b"\rz\r\n".to_vec()));
        // CRLF . CRLF must be at a line start: "x.\r\n" is not the end.
        let (body, _) = read_data(&[b"x.\r\n.\r\n"], 1000);
        assert_eq!(body, DataBody::Complete(b"x.\r\n".to_vec()));
    }

    #[test]
    fn terminator_split_at_every_byte_boundary() {
        let input: &[u8] = b"From: a@b\r\n\r\n..x\r\nline\nend.\r\n.\r\nMAIL FROM:<>\r\n";
        let (expected, expected_consumed) = read_data(&[input], 1000);
        assert_eq!(expected, DataBody::Complete(b"From: a@b\r\n\r\n.x\r\nline\r\nend.\r\n".to_vec()));
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(read_data(&[a, b], 1000), (expected.clone(), expected_consumed), "split at {split}");
        }
        for first in 0..=input.len() {
            for second in first..=input.len() {
                let pieces = [&input[..first], &input[first..second], &input[second..]];
                assert_eq!(read_data(&pieces, 1000), (expected.clone(), expected_consumed), "{first}/{second}");
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(read_data(&bytes, 1000), (expected, expected_consumed));
    }

    #[test]
    fn size_limit_keeps_reading_to_the_end() {
        let body = b"12345\r\n"; // 7 bytes once stored
        assert_eq!(read_data(&[b"12345\r\n.\r\n"], 7).0, DataBody::Complete(body.to_vec()));
        let (result, consumed) = read_data(&[b"12345\r\n", b"6789\r\n.\r\nNOOP\r\n"], 7);
        assert_eq!(result, DataBody::TooBig { size: 13 });
        assert_eq!(consumed, 16);
        // The limit counts unstuffed bytes: the stuffed dot does not count.
        assert_eq!(read_data(&[b"..1234\r\n.\r\n"], 7).0, DataBody::Complete(b".1234\r\n".to_vec()));
    }

    #[test]
    fn feed_after_done_consumes_nothing() {
        let mut r = DataReader::new(100);
        assert_eq!(r.feed(b".\r\n"), DataProgress::Done { consumed: 3 });
        assert_eq!(r.feed(b"more"), DataProgress::Done { consumed: 0 });
    }
}
