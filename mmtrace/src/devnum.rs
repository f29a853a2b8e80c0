//! Device numbers in the three encodings mmtrace meets: the kernel's internal
//! `dev_t` (`major << 20 | minor`, as in `super_block.s_dev` and tracepoint
//! `dev_t` fields), glibc's userspace `st_dev` from stat(2), and the
//! `major:minor` hex pair printed in `/proc/<pid>/maps`.

use std::fmt;

/// Number of bits the kernel's internal `dev_t` gives the minor number
/// (`MINORBITS` in `include/linux/kdev_t.h`).
const KERNEL_MINOR_BITS: u32 = 20;
const KERNEL_MINOR_MASK: u32 = (1 << KERNEL_MINOR_BITS) - 1;

/// A device number split into major and minor, independent of encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Dev {
    pub major: u32,
    pub minor: u32,
}

impl Dev {
    pub const fn new(major: u32, minor: u32) -> Dev {
        Dev { major, minor }
    }

    /// Decodes the kernel's internal `dev_t` (`MKDEV(ma, mi) = ma << 20 | mi`).
    pub fn from_kernel(s_dev: u32) -> Dev {
        Dev {
            major: s_dev >> KERNEL_MINOR_BITS,
            minor: s_dev & KERNEL_MINOR_MASK,
        }
    }

    /// Encodes as the kernel's internal `dev_t`. Majors above 12 bits and
    /// minors above 20 bits cannot be represented there and are truncated.
    pub fn to_kernel(self) -> u32 {
        (self.major << KERNEL_MINOR_BITS) | (self.minor & KERNEL_MINOR_MASK)
    }

    /// Decodes a userspace `st_dev` as glibc's `gnu_dev_major`/`gnu_dev_minor`
    /// do: major in bits 8..20 and 44..64, minor in bits 0..8 and 20..44.
    pub fn from_user(st_dev: u64) -> Dev {
        let major = ((st_dev >> 8) & 0xfff) | ((st_dev >> 32) & !0xfff);
        let minor = (st_dev & 0xff) | ((st_dev >> 12) & !0xff);
        Dev {
            major: major as u32,
            minor: minor as u32,
        }
    }

    /// Encodes as a userspace `st_dev` (glibc's `gnu_dev_makedev`).
    pub fn to_user(self) -> u64 {
        let major = u64::from(self.major);
        let minor = u64::from(self.minor);
        ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
    }

    /// Parses the `major:minor` column of `/proc/<pid>/maps` (hex, e.g.
    /// `fe:00` is 254:0). Returns `None` if it is not two hex numbers.
    pub fn parse_maps(s: &str) -> Option<Dev> {
        let (major, minor) = s.split_once(':')?;
        Some(Dev {
            major: parse_hex(major)?,
            minor: parse_hex(minor)?,
        })
    }
}

fn parse_hex(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl serde::Serialize for Dev {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// In JSON a device number is the string `major:minor`.
impl schemars::JsonSchema for Dev {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Dev".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+:[0-9]+$",
            "description": "Device number `major:minor`, as in /proc/<pid>/maps."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_encoding() {
        assert_eq!(Dev::from_kernel(0x0fe0_0000), Dev::new(254, 0));
        assert_eq!(Dev::from_kernel((8 << 20) | 1), Dev::new(8, 1));
        assert_eq!(Dev::from_kernel(0), Dev::new(0, 0));
        // Anonymous block devices (tmpfs, overlayfs) are major 0.
        assert_eq!(Dev::from_kernel(0x2a), Dev::new(0, 42));
        assert_eq!(Dev::from_kernel(u32::MAX), Dev::new(0xfff, 0xfffff));
        for d in [
            Dev::new(254, 0),
            Dev::new(8, 17),
            Dev::new(0, 0xfffff),
            Dev::new(4095, 1),
        ] {
            assert_eq!(Dev::from_kernel(d.to_kernel()), d);
        }
    }

    #[test]
    fn user_encoding_small() {
        assert_eq!(Dev::from_user(0xfe00), Dev::new(254, 0));
        assert_eq!(Dev::from_user(0x0801), Dev::new(8, 1));
        assert_eq!(Dev::new(254, 0).to_user(), 0xfe00);
        assert_eq!(Dev::from_user(0x2a), Dev::new(0, 42));
    }

    #[test]
    fn user_encoding_large_matches_glibc() {
        let cases = [
            Dev::new(0, 0),
            Dev::new(259, 3),       // nvme partitions: major > 255
            Dev::new(0, 300),       // minor > 255
            Dev::new(4096, 1),      // major > 12 bits
            Dev::new(1, 0x12_3456), // minor > 20 bits
            Dev::new(u32::MAX, u32::MAX),
            Dev::new(0xabcd_ef01, 0x1234_5678),
        ];
        for d in cases {
            let raw = d.to_user();
            assert_eq!(Dev::from_user(raw), d, "{d} via {raw:#x}");
            // libc's own makedev/major/minor implement the glibc scheme.
            assert_eq!(raw, libc::makedev(d.major, d.minor) as u64, "{d}");
            assert_eq!(libc::major(raw as libc::dev_t), d.major, "{d}");
            assert_eq!(libc::minor(raw as libc::dev_t), d.minor, "{d}");
        }
        assert_eq!(Dev::from_user(u64::MAX), Dev::new(u32::MAX, u32::MAX));
    }

    #[test]
    fn kernel_and_user_agree() {
        let d = Dev::from_kernel((259 << 20) | 5);
        assert_eq!(Dev::from_user(d.to_user()), d);
    }

    #[test]
    fn parse_maps_column() {
        assert_eq!(Dev::parse_maps("fe:00"), Some(Dev::new(254, 0)));
        assert_eq!(Dev::parse_maps("00:00"), Some(Dev::new(0, 0)));
        assert_eq!(Dev::parse_maps("103:02"), Some(Dev::new(259, 2)));
        assert_eq!(Dev::parse_maps("FE:1a"), Some(Dev::new(254, 26)));
        for bad in [
            "",
            ":",
            "fe",
            "fe:",
            ":00",
            "fe:00:01",
            "g0:00",
            "+1:00",
            "fe :00",
            "123456789:0",
        ] {
            assert_eq!(Dev::parse_maps(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn display_and_serialize() {
        let d = Dev::new(254, 0);
        assert_eq!(d.to_string(), "254:0");
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"254:0\"");
        assert_eq!(format!("{:>8}", d.to_string()), "   254:0");
    }

    #[test]
    fn ordering_is_major_then_minor() {
        let mut v = vec![Dev::new(8, 1), Dev::new(0, 99), Dev::new(8, 0)];
        v.sort();
        assert_eq!(v, vec![Dev::new(0, 99), Dev::new(8, 0), Dev::new(8, 1)]);
    }
}
