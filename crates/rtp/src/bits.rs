//! [`BitReader`]: reads codec headers bit by bit, most significant bit first (as VP9 and AV1
//! headers are written).

/// A bit cursor over a byte slice; every read is `None` past the end.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    /// A cursor at the first bit of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// The next `n` bits (at most 32) as a number.
    pub fn read(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            v = v << 1 | u32::from(byte >> (7 - self.pos % 8) & 1);
            self.pos += 1;
        }
        Some(v)
    }

    /// The next bit as a flag.
    pub fn flag(&mut self) -> Option<bool> {
        self.read(1).map(|b| b == 1)
    }

    /// AV1's `uvlc()` (AV1 spec 4.10.3).
    pub fn uvlc(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while !self.flag()? {
            zeros += 1;
            if zeros >= 32 {
                return None;
            }
        }
        Some(self.read(zeros)? + ((1u32 << zeros) - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_msb_first_and_stops_at_the_end() {
        let mut r = BitReader::new(&[0b1010_0000, 0xff]);
        assert_eq!(r.read(3), Some(0b101));
        assert_eq!(r.flag(), Some(false));
        assert_eq!(r.read(12), Some(0x0ff));
        assert_eq!(r.read(1), None);
        // uvlc: 2 leading zeros, the 1, then 2 bits `11`: 3 + 3.
        assert_eq!(BitReader::new(&[0b0011_1000]).uvlc(), Some(6));
        assert_eq!(BitReader::new(&[0, 0, 0, 0, 0]).uvlc(), None);
    }
}
