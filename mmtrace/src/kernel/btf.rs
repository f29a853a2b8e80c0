//! A small reader of kernel BTF (`/sys/kernel/btf/vmlinux`), enough to look
//! up struct member offsets, type sizes and enum values for the running
//! kernel. See <https://docs.kernel.org/bpf/btf.html> for the format.
//!
//! We parse BTF ourselves because btf-rs is LGPL and `aya::Btf` does not
//! expose member offsets. Only standalone (base) BTF such as vmlinux is
//! supported, not split BTF of modules, whose ids and strings continue
//! vmlinux's.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Errors from reading BTF or looking things up in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("BTF has no struct, union or enum named {name}")]
    NoType { name: String },
    #[error("struct {strukt} has no member {member} in BTF")]
    NoMember { strukt: String, member: String },
    #[error("enum {ty} has no enumerator {name} in BTF")]
    NoEnumerator { ty: String, name: String },
    #[error("{strukt}.{member} is a bitfield; it has no byte offset or size")]
    Bitfield { strukt: String, member: String },
}

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// Bound on typedef/modifier chains and anonymous-member nesting, against
/// cycles in malformed input.
const MAX_DEPTH: usize = 64;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_INT => "int",
        KIND_PTR => "pointer",
        KIND_ARRAY => "array",
        KIND_STRUCT => "struct",
        KIND_UNION => "union",
        KIND_ENUM | KIND_ENUM64 => "enum",
        KIND_FWD => "forward declaration",
        KIND_TYPEDEF => "typedef",
        KIND_VOLATILE => "volatile",
        KIND_CONST => "const",
        KIND_RESTRICT => "restrict",
        KIND_FUNC => "function",
        KIND_FUNC_PROTO => "function prototype",
        KIND_VAR => "variable",
        KIND_DATASEC => "data section",
        KIND_FLOAT => "float",
        KIND_DECL_TAG => "decl tag",
        KIND_TYPE_TAG => "type tag",
        _ => "unknown kind",
    }
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    ty: u32,
    /// Raw offset word (bit offset, or bitfield size << 24 | bit offset).
    offset: u32,
}

#[derive(Clone, Debug)]
enum Extra {
    None,
    /// INT encoding word: bits 0..8 nr_bits, 16..24 bit offset.
    Int(u32),
    Array {
        elem: u32,
        nelems: u32,
    },
    Members(Range<u32>),
    Enums(Range<u32>),
}

#[derive(Clone, Debug)]
struct Type {
    kind: u8,
    kind_flag: bool,
    name_off: u32,
    vlen: u16,
    /// `size` for INT/STRUCT/UNION/ENUM/ENUM64/FLOAT/DATASEC, else `type`.
    size_or_type: u32,
    extra: Extra,
}

/// A parsed BTF blob: types and string table.
pub struct Btf {
    strings: String,
    /// Index 0 is type id 1 (id 0 is `void`).
    types: Vec<Type>,
    members: Vec<Member>,
    enums: Vec<(u32, i64)>,
    /// Type ids of named STRUCT/UNION/FWD/ENUM/ENUM64/TYPEDEF types, in id order.
    by_name: HashMap<Box<str>, Vec<u32>>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.types.len())
            .field("strings_len", &self.strings.len())
            .finish()
    }
}

fn malformed(msg: impl Into<String>) -> BtfError {
    BtfError::Malformed(msg.into())
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self, what: &str) -> Result<u32, BtfError> {
        let end = self.pos + 4;
        let b = self.data.get(self.pos..end).ok_or_else(|| {
            malformed(format!(
                "type section truncated reading {what} at byte {} of {}",
                self.pos,
                self.data.len()
            ))
        })?;
        self.pos = end;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A sysfs file mapped read-only, unmapped on drop. Reading the 5.5 MB
/// vmlinux BTF from sysfs costs a copy in page-sized reads and a page fault
/// per page (6-10 ms on the 2-vCPU VM); the kernel maps it in one call.
/// Only sysfs files, which cannot shrink under the mapping (a regular file
/// truncated meanwhile would raise SIGBUS): others are read.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(file: &std::fs::File) -> Option<Self> {
        use std::os::fd::AsRawFd as _;
        const SYSFS_MAGIC: i64 = 0x6265_6572;
        // SAFETY: zeroed statfs is a valid out-parameter.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: an open descriptor and a valid out-pointer.
        if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0
            || fs.f_type as i64 != SYSFS_MAGIC
        {
            return None;
        }
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: a read-only private mapping of an open file; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(Self { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes at `ptr` while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

fn le32(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

impl Btf {
    /// Reads and parses a BTF file, normally `/sys/kernel/btf/vmlinux`:
    /// mapped where the kernel allows it (vmlinux BTF since Linux 6.16),
    /// else read.
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let io = |source| BtfError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let parsed = match Mapped::new(&file) {
            Some(m) => Btf::from_bytes(m.bytes()),
            None => {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut &file, &mut data).map_err(io)?;
                Btf::from_bytes(&data)
            }
        };
        parsed.map_err(|e| match e {
            BtfError::Malformed(m) => BtfError::Malformed(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses a raw BTF blob (little-endian only).
    pub fn from_bytes(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < HEADER_LEN {
            return Err(malformed(format!(
                "{} bytes is too short for a BTF header",
                data.len()
            )));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic == MAGIC.swap_bytes() {
            return Err(malformed(
                "big-endian BTF; only little-endian BTF (as on this host) is supported",
            ));
        }
        if magic != MAGIC {
            return Err(malformed(format!(
                "bad magic {magic:#06x}, expected {MAGIC:#06x}: not a BTF blob"
            )));
        }
        let version = data[2];
        if version != 1 {
            return Err(malformed(format!("unsupported BTF version {version}")));
        }
        let hdr_len = le32(data, 4) as usize;
        let [type_off, type_len, str_off, str_len] =
            [8, 12, 16, 20].map(|at| le32(data, at) as usize);
        if hdr_len < HEADER_LEN || hdr_len > data.len() {
            return Err(malformed(format!(
                "header length {hdr_len} out of range (blob is {} bytes)",
                data.len()
            )));
        }
        let body = &data[hdr_len..];
        let section = |name: &str, off: usize, len: usize| {
            off.checked_add(len)
                .filter(|&end| end <= body.len())
                .map(|end| &body[off..end])
                .ok_or_else(|| {
                    malformed(format!(
                        "{name} section {off}+{len} runs past the end of the data ({} bytes after header)",
                        body.len()
                    ))
                })
        };
        let type_data = section("type", type_off, type_len)?;
        let str_data = section("string", str_off, str_len)?;
        if type_off % 4 != 0 {
            return Err(malformed(format!(
                "type section offset {type_off} is not 4-aligned"
            )));
        }
        if str_data.first().is_some_and(|&b| b != 0) || str_data.last().is_some_and(|&b| b != 0) {
            return Err(malformed(
                "string section must start and end with a NUL byte",
            ));
        }
        let strings = std::str::from_utf8(str_data)
            .map_err(|e| malformed(format!("string section is not UTF-8: {e}")))?
            .to_owned();

        let mut btf = Btf {
            strings,
            types: Vec::new(),
            members: Vec::new(),
            enums: Vec::new(),
            by_name: HashMap::new(),
        };
        btf.parse_types(type_data)?;
        btf.index_names();
        Ok(btf)
    }

    fn check_name(&self, name_off: u32, id: usize) -> Result<(), BtfError> {
        if (name_off as usize) < self.strings.len() {
            Ok(())
        } else {
            Err(malformed(format!(
                "type {id}: name offset {name_off} is outside the string section ({} bytes)",
                self.strings.len()
            )))
        }
    }

    fn parse_types(&mut self, data: &[u8]) -> Result<(), BtfError> {
        let mut r = Reader { data, pos: 0 };
        while r.pos < data.len() {
            let id = self.types.len() + 1;
            let name_off = r.u32("type name")?;
            let info = r.u32("type info")?;
            let size_or_type = r.u32("type size/type")?;
            let vlen = (info & 0xffff) as u16;
            let kind = ((info >> 24) & 0x1f) as u8;
            let kind_flag = info >> 31 != 0;
            self.check_name(name_off, id)?;
            let extra = match kind {
                KIND_INT => Extra::Int(r.u32("int encoding")?),
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => Extra::None,
                KIND_ARRAY => {
                    let elem = r.u32("array element type")?;
                    let _index = r.u32("array index type")?;
                    let nelems = r.u32("array length")?;
                    Extra::Array { elem, nelems }
                }
                KIND_STRUCT | KIND_UNION => {
                    let start = self.members.len() as u32;
                    for _ in 0..vlen {
                        let m = Member {
                            name_off: r.u32("member name")?,
                            ty: r.u32("member type")?,
                            offset: r.u32("member offset")?,
                        };
                        self.check_name(m.name_off, id)?;
                        self.members.push(m);
                    }
                    Extra::Members(start..self.members.len() as u32)
                }
                KIND_ENUM => {
                    let start = self.enums.len() as u32;
                    for _ in 0..vlen {
                        let name_off = r.u32("enumerator name")?;
                        let raw = r.u32("enumerator value")?;
                        self.check_name(name_off, id)?;
                        // kind_flag marks a signed enum (since Linux 6.0;
                        // older BTF has no unsigned enums but never sets it).
                        let val = if kind_flag {
                            i64::from(raw as i32)
                        } else {
                            i64::from(raw)
                        };
                        self.enums.push((name_off, val));
                    }
                    Extra::Enums(start..self.enums.len() as u32)
                }
                KIND_ENUM64 => {
                    let start = self.enums.len() as u32;
                    for _ in 0..vlen {
                        let name_off = r.u32("enumerator name")?;
                        let lo = r.u32("enumerator value")?;
                        let hi = r.u32("enumerator value")?;
                        self.check_name(name_off, id)?;
                        let val = (u64::from(hi) << 32 | u64::from(lo)) as i64;
                        self.enums.push((name_off, val));
                    }
                    Extra::Enums(start..self.enums.len() as u32)
                }
                KIND_FUNC_PROTO => {
                    r.pos += 8 * usize::from(vlen);
                    Extra::None
                }
                KIND_VAR | KIND_DECL_TAG => {
                    r.pos += 4;
                    Extra::None
                }
                KIND_DATASEC => {
                    r.pos += 12 * usize::from(vlen);
                    Extra::None
                }
                other => {
                    return Err(malformed(format!(
                        "type {id} at byte {} has unknown kind {other}",
                        r.pos - 12
                    )));
                }
            };
            if r.pos > data.len() {
                return Err(malformed(format!(
                    "type {id} ({}) runs past the end of the type section",
                    kind_name(kind)
                )));
            }
            self.types.push(Type {
                kind,
                kind_flag,
                name_off,
                vlen,
                size_or_type,
                extra,
            });
        }
        Ok(())
    }

    fn index_names(&mut self) {
        for (i, t) in self.types.iter().enumerate() {
            if t.name_off == 0
                || !matches!(
                    t.kind,
                    KIND_STRUCT | KIND_UNION | KIND_FWD | KIND_ENUM | KIND_ENUM64 | KIND_TYPEDEF
                )
            {
                continue;
            }
            let name = str_at(&self.strings, t.name_off);
            self.by_name
                .entry(name.into())
                .or_default()
                .push(i as u32 + 1);
        }
    }

    /// Number of types (not counting `void`).
    pub fn type_count(&self) -> usize {
        self.types.len()
    }

    fn name(&self, off: u32) -> &str {
        str_at(&self.strings, off)
    }

    fn ty(&self, id: u32) -> Result<&Type, BtfError> {
        if id == 0 {
            return Err(malformed(
                "reference to void (type 0) where a type was expected",
            ));
        }
        self.types.get(id as usize - 1).ok_or_else(|| {
            malformed(format!(
                "reference to type {id}, but there are only {}",
                self.types.len()
            ))
        })
    }

    /// Follows typedef/const/volatile/restrict/type-tag to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<(u32, &Type), BtfError> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok((id, t)),
            }
        }
        Err(malformed(format!(
            "type chain from type {id} is too long (cycle?)"
        )))
    }

    fn type_size(&self, id: u32, depth: usize) -> Result<u32, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!("type {id} nests too deeply (cycle?)")));
        }
        let (id, t) = self.resolve(id)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT
            | KIND_DATASEC => Ok(t.size_or_type),
            KIND_PTR => Ok(std::mem::size_of::<usize>() as u32),
            KIND_ARRAY => {
                let Extra::Array { elem, nelems } = t.extra else {
                    unreachable!("array without array data")
                };
                self.type_size(elem, depth + 1)?
                    .checked_mul(nelems)
                    .ok_or_else(|| malformed(format!("array type {id} size overflows")))
            }
            k => Err(malformed(format!(
                "type {id} ({} {}) has no size",
                kind_name(k),
                self.name(t.name_off)
            ))),
        }
    }

    /// The struct or union called `name`: the first with members (skipping
    /// forward declarations), else the first empty one, else a typedef of one.
    fn find_struct(&self, name: &str) -> Result<u32, BtfError> {
        let no_type = || BtfError::NoType {
            name: name.to_owned(),
        };
        let ids = self.by_name.get(name).ok_or_else(no_type)?;
        let is_su = |t: &Type| matches!(t.kind, KIND_STRUCT | KIND_UNION);
        let mut empty = None;
        for &id in ids {
            let t = self.ty(id)?;
            if is_su(t) {
                if t.vlen > 0 {
                    return Ok(id);
                }
                empty.get_or_insert(id);
            }
        }
        if let Some(id) = empty {
            return Ok(id);
        }
        for &id in ids {
            if self.ty(id)?.kind == KIND_TYPEDEF
                && let Ok((rid, t)) = self.resolve(id)
                && is_su(t)
            {
                return Ok(rid);
            }
        }
        Err(no_type())
    }

    fn members_of(&self, t: &Type) -> &[Member] {
        match &t.extra {
            Extra::Members(r) => &self.members[r.start as usize..r.end as usize],
            _ => &[],
        }
    }

    /// Finds `name` among the members of struct/union `id`, descending into
    /// anonymous struct/union members. Returns (bit offset, member type,
    /// is bitfield).
    fn find_member(
        &self,
        id: u32,
        name: &str,
        depth: usize,
    ) -> Result<Option<(u64, u32, bool)>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!(
                "anonymous members of type {id} nest too deeply (cycle?)"
            )));
        }
        let t = self.ty(id)?;
        for m in self.members_of(t) {
            let (bit_off, bitfield_size) = if t.kind_flag {
                (m.offset & 0xff_ffff, m.offset >> 24)
            } else {
                (m.offset, 0)
            };
            let mname = self.name(m.name_off);
            if mname == name {
                let bitfield = bitfield_size != 0 || bit_off % 8 != 0 || self.is_int_bitfield(m.ty);
                return Ok(Some((u64::from(bit_off), m.ty, bitfield)));
            }
            if mname.is_empty() {
                let (sub, st) = self.resolve(m.ty)?;
                if matches!(st.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((off, ty, bf)) = self.find_member(sub, name, depth + 1)?
                {
                    return Ok(Some((u64::from(bit_off) + off, ty, bf)));
                }
            }
        }
        Ok(None)
    }

    /// Pre-kind_flag BTF encodes bitfields in the INT type's encoding.
    /// Unresolvable types are not bitfields; the error surfaces when their
    /// size is asked for.
    fn is_int_bitfield(&self, ty: u32) -> bool {
        match self.resolve(ty) {
            Ok((_, t)) => match t.extra {
                Extra::Int(enc) => {
                    let bits = enc & 0xff;
                    let bit_off = (enc >> 16) & 0xff;
                    bit_off != 0 || bits != t.size_or_type.saturating_mul(8)
                }
                _ => false,
            },
            Err(_) => false,
        }
    }

    /// Walks a dotted member path; returns (byte offset, member type id).
    fn walk(&self, strukt: &str, member: &str) -> Result<(u32, u32), BtfError> {
        let mut id = self.find_struct(strukt)?;
        let mut bits: u64 = 0;
        let mut last_ty = 0;
        let no_member = || BtfError::NoMember {
            strukt: strukt.to_owned(),
            member: member.to_owned(),
        };
        for (i, part) in member.split('.').enumerate() {
            if part.is_empty() {
                return Err(no_member());
            }
            if i > 0 {
                let (rid, t) = self.resolve(last_ty)?;
                if !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
                    return Err(no_member());
                }
                id = rid;
            }
            let (off, ty, bitfield) = self.find_member(id, part, 0)?.ok_or_else(no_member)?;
            if bitfield {
                return Err(BtfError::Bitfield {
                    strukt: strukt.to_owned(),
                    member: member.to_owned(),
                });
            }
            bits += off;
            last_ty = ty;
        }
        let bytes = u32::try_from(bits / 8)
            .map_err(|_| malformed(format!("{strukt}.{member} offset overflows")))?;
        Ok((bytes, last_ty))
    }

    /// Byte offset of `member` in struct (or union) `strukt`. `member` may be
    /// a dotted path `a.b.c` into nested structs/unions (through typedefs and
    /// modifiers). Anonymous struct/union members are searched recursively.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        self.walk(strukt, member).map(|(off, _)| off)
    }

    /// Size in bytes of the member's type (resolved through typedefs and
    /// modifiers).
    pub fn member_size(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let (_, ty) = self.walk(strukt, member)?;
        self.type_size(ty, 0)
    }

    /// Size in bytes of struct (or union) `strukt`.
    pub fn struct_size(&self, strukt: &str) -> Result<u32, BtfError> {
        let id = self.find_struct(strukt)?;
        Ok(self.ty(id)?.size_or_type)
    }

    /// Value of `enumerator` in enum `enum_name` (ENUM or ENUM64). Unsigned
    /// 64-bit values above `i64::MAX` wrap.
    pub fn enum_value(&self, enum_name: &str, enumerator: &str) -> Result<i64, BtfError> {
        let ids = self
            .by_name
            .get(enum_name)
            .ok_or_else(|| BtfError::NoType {
                name: enum_name.to_owned(),
            })?;
        let mut found_enum = false;
        for &id in ids {
            let (_, t) = self.resolve(id)?;
            if let Extra::Enums(r) = &t.extra {
                found_enum = true;
                let vals = &self.enums[r.start as usize..r.end as usize];
                if let Some(&(_, v)) = vals.iter().find(|(n, _)| self.name(*n) == enumerator) {
                    return Ok(v);
                }
            }
        }
        if found_enum {
            Err(BtfError::NoEnumerator {
                ty: enum_name.to_owned(),
                name: enumerator.to_owned(),
            })
        } else {
            Err(BtfError::NoType {
                name: enum_name.to_owned(),
            })
        }
    }
}

/// The NUL-terminated string at `off` (validated to be in range at parse time).
fn str_at(strings: &str, off: u32) -> &str {
    let s = strings.get(off as usize..).unwrap_or("");
    s.find('\0').map_or(s, |end| &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF writer for tests.
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn put(&mut self, v: u32) {
            self.types.extend_from_slice(&v.to_le_bytes());
        }

        fn head(
            &mut self,
            name: &str,
            kind: u8,
            vlen: u16,
            kind_flag: bool,
            size_or_type: u32,
        ) -> u32 {
            let n = self.str(name);
            self.put(n);
            self.put(u32::from(vlen) | u32::from(kind) << 24 | u32::from(kind_flag) << 31);
            self.put(size_or_type);
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, KIND_INT, 0, false, size);
            self.put(size * 8);
            id
        }

        /// An INT with a bit offset/width encoding (pre-kind_flag bitfield).
        fn int_enc(&mut self, name: &str, size: u32, bit_off: u32, bits: u32) -> u32 {
            let id = self.head(name, KIND_INT, 0, false, size);
            self.put(bit_off << 16 | bits);
            id
        }

        fn simple(&mut self, kind: u8, name: &str, ty: u32) -> u32 {
            self.head(name, kind, 0, false, ty)
        }

        fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            let id = self.head("", KIND_ARRAY, 0, false, 0);
            self.put(elem);
            self.put(index);
            self.put(n);
            id
        }

        /// Members are (name, type, bit offset, bitfield size).
        fn composite(
            &mut self,
            kind: u8,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kind_flag = members.iter().any(|m| m.3 != 0);
            let id = self.head(name, kind, members.len() as u16, kind_flag, size);
            for &(n, ty, off, bits) in members {
                let n = self.str(n);
                self.put(n);
                self.put(ty);
                self.put(if kind_flag { bits << 24 | off } else { off });
            }
            id
        }

        fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32, u32)]) -> u32 {
            self.composite(KIND_STRUCT, name, size, members)
        }

        fn union(&mut self, name: &str, size: u32, members: &[(&str, u32, u32, u32)]) -> u32 {
            self.composite(KIND_UNION, name, size, members)
        }

        fn enum32(&mut self, name: &str, signed: bool, vals: &[(&str, i32)]) -> u32 {
            let id = self.head(name, KIND_ENUM, vals.len() as u16, signed, 4);
            for &(n, v) in vals {
                let n = self.str(n);
                self.put(n);
                self.put(v as u32);
            }
            id
        }

        fn enum64(&mut self, name: &str, vals: &[(&str, u64)]) -> u32 {
            let id = self.head(name, KIND_ENUM64, vals.len() as u16, false, 8);
            for &(n, v) in vals {
                let n = self.str(n);
                self.put(n);
                self.put(v as u32);
                self.put((v >> 32) as u32);
            }
            id
        }

        fn func_proto(&mut self, ret: u32, params: &[(&str, u32)]) -> u32 {
            let id = self.head("", KIND_FUNC_PROTO, params.len() as u16, false, ret);
            for &(n, ty) in params {
                let n = self.str(n);
                self.put(n);
                self.put(ty);
            }
            id
        }

        fn var(&mut self, name: &str, ty: u32) -> u32 {
            let id = self.head(name, KIND_VAR, 0, false, ty);
            self.put(1);
            id
        }

        fn datasec(&mut self, name: &str, vars: &[(u32, u32, u32)]) -> u32 {
            let size = vars.iter().map(|v| v.1 + v.2).max().unwrap_or(0);
            let id = self.head(name, KIND_DATASEC, vars.len() as u16, false, size);
            for &(ty, off, sz) in vars {
                self.put(ty);
                self.put(off);
                self.put(sz);
            }
            id
        }

        fn decl_tag(&mut self, name: &str, ty: u32, idx: i32) -> u32 {
            let id = self.head(name, KIND_DECL_TAG, 0, false, ty);
            self.put(idx as u32);
            id
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            for v in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A blob exercising every kind, with the interesting structs last so a
    /// mis-skipped trailing record would shift their ids.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let ulong = b.int("unsigned long", 8);
        let uchar = b.int("unsigned char", 1);
        let dbl = b.head("double", KIND_FLOAT, 0, false, 8);
        let ptr = b.simple(KIND_PTR, "", int);
        let proto = b.func_proto(int, &[("a", int), ("b", ptr)]);
        b.simple(KIND_FUNC, "do_thing", proto);
        let var = b.var("some_var", ulong);
        b.datasec(".data", &[(var, 0, 8)]);
        b.decl_tag("tag", int, -1);
        let tagged = b.simple(KIND_TYPE_TAG, "user", int);
        let restrict = b.simple(KIND_RESTRICT, "", ptr);
        let arr = b.array(uchar, int, 16);

        // Forward declaration and an empty duplicate before the real struct.
        b.simple(KIND_FWD, "file", 0);
        b.strukt("file", 0, &[]);
        let inode_ptr = b.simple(KIND_PTR, "", 0);
        let file = b.strukt(
            "file",
            32,
            &[
                ("f_mode", int, 0, 0),
                ("f_inode", inode_ptr, 64, 0),
                ("f_name", arr, 128, 0),
            ],
        );
        let file_ptr = b.simple(KIND_PTR, "", file);

        // typedef chain: vm_flags_t -> const -> volatile -> __vm_flags_t -> unsigned long
        let inner = b.simple(KIND_TYPEDEF, "__vm_flags_t", ulong);
        let vol = b.simple(KIND_VOLATILE, "", inner);
        let cst = b.simple(KIND_CONST, "", vol);
        let vm_flags_t = b.simple(KIND_TYPEDEF, "vm_flags_t", cst);

        // Nested struct reached through a typedef.
        let range = b.strukt(
            "range",
            16,
            &[("start", ulong, 0, 0), ("end", ulong, 64, 0)],
        );
        let range_t = b.simple(KIND_TYPEDEF, "range_t", range);
        let range_c = b.simple(KIND_CONST, "", range_t);

        // Anonymous union containing an anonymous struct.
        let anon_struct = b.strukt("", 16, &[("lock", int, 0, 0), ("seq", ulong, 64, 0)]);
        let anon_union = b.union(
            "",
            16,
            &[
                ("vm_flags", vm_flags_t, 0, 0),
                ("__vm_flags", ulong, 0, 0),
                ("", anon_struct, 0, 0),
            ],
        );
        // Struct with bitfields (kind_flag set): a:3 at bit 0, b:5 at bit 3.
        b.strukt(
            "vm_area_struct",
            80,
            &[
                ("vm_start", ulong, 0, 0),
                ("vm_end", ulong, 64, 0),
                ("", anon_union, 128, 0),
                ("vm_file", file_ptr, 256, 0),
                ("vm_range", range_c, 320, 0),
                ("bits_a", int, 448, 3),
                ("bits_b", int, 451, 5),
                ("tagged", tagged, 480, 0),
                ("rp", restrict, 512, 0),
                ("d", dbl, 576, 0),
            ],
        );
        // Old-style bitfield, encoded in the INT type.
        let bf_int = b.int_enc("unsigned int", 4, 0, 3);
        b.strukt("old_bits", 4, &[("x", bf_int, 0, 0), ("y", bf_int, 3, 0)]);
        b.union("u", 8, &[("a", int, 0, 0), ("b", ulong, 0, 0)]);
        let anon = b.strukt("", 4, &[("x", int, 0, 0)]);
        b.simple(KIND_TYPEDEF, "atomic_t", anon);

        b.enum32(
            "pid_type",
            false,
            &[("PIDTYPE_PID", 0), ("PIDTYPE_TGID", 1), ("PIDTYPE_MAX", 4)],
        );
        b.enum32("signed_e", true, &[("NEG", -5), ("POS", 7)]);
        b.enum32("unsigned_e", false, &[("BIG", -1)]);
        b.enum64(
            "big_e",
            &[("LOW", 1), ("HIGH", 0x1_0000_0002), ("MAX", u64::MAX)],
        );
        b.build()
    }

    #[test]
    fn offsets_and_sizes() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        assert_eq!(btf.member_offset("vm_area_struct", "vm_start").unwrap(), 0);
        assert_eq!(btf.member_offset("vm_area_struct", "vm_end").unwrap(), 8);
        assert_eq!(btf.member_offset("vm_area_struct", "vm_file").unwrap(), 32);
        assert_eq!(btf.member_size("vm_area_struct", "vm_file").unwrap(), 8);
        assert_eq!(btf.member_size("vm_area_struct", "rp").unwrap(), 8);
        assert_eq!(btf.member_size("vm_area_struct", "tagged").unwrap(), 4);
        assert_eq!(btf.member_size("vm_area_struct", "d").unwrap(), 8);
        assert_eq!(btf.member_offset("vm_area_struct", "d").unwrap(), 72);
        assert_eq!(btf.struct_size("vm_area_struct").unwrap(), 80);
        assert_eq!(btf.struct_size("u").unwrap(), 8);
        assert_eq!(btf.member_offset("u", "b").unwrap(), 0);
        assert_eq!(btf.member_size("u", "b").unwrap(), 8);
    }

    #[test]
    fn anonymous_members_are_searched() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        assert_eq!(btf.member_offset("vm_area_struct", "vm_flags").unwrap(), 16);
        assert_eq!(btf.member_size("vm_area_struct", "vm_flags").unwrap(), 8);
        assert_eq!(
            btf.member_offset("vm_area_struct", "__vm_flags").unwrap(),
            16
        );
        // Anonymous struct inside the anonymous union.
        assert_eq!(btf.member_offset("vm_area_struct", "seq").unwrap(), 24);
        assert_eq!(btf.member_size("vm_area_struct", "lock").unwrap(), 4);
    }

    #[test]
    fn dotted_paths() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        assert_eq!(btf.member_offset("vm_area_struct", "vm_range").unwrap(), 40);
        assert_eq!(
            btf.member_offset("vm_area_struct", "vm_range.end").unwrap(),
            48
        );
        assert_eq!(btf.member_size("vm_area_struct", "vm_range").unwrap(), 16);
        assert_eq!(
            btf.member_size("vm_area_struct", "vm_range.start").unwrap(),
            8
        );
        // A pointer is not walked into.
        let e = btf
            .member_offset("vm_area_struct", "vm_file.f_inode")
            .unwrap_err();
        assert!(matches!(e, BtfError::NoMember { .. }), "{e:?}");
        let e = btf
            .member_offset("vm_area_struct", "vm_range.middle")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "struct vm_area_struct has no member vm_range.middle in BTF"
        );
        let e = btf.member_offset("vm_area_struct", "").unwrap_err();
        assert!(matches!(e, BtfError::NoMember { .. }), "{e:?}");
    }

    #[test]
    fn duplicates_and_forward_declarations() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        assert_eq!(btf.struct_size("file").unwrap(), 32);
        assert_eq!(btf.member_offset("file", "f_inode").unwrap(), 8);
        assert_eq!(btf.member_size("file", "f_name").unwrap(), 16);
        assert_eq!(btf.member_offset("file", "f_name").unwrap(), 16);
        // A typedef of an anonymous struct is accepted as a struct name.
        assert_eq!(btf.struct_size("atomic_t").unwrap(), 4);
        assert_eq!(btf.member_offset("atomic_t", "x").unwrap(), 0);
    }

    #[test]
    fn bitfields_are_refused() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        for m in ["bits_a", "bits_b"] {
            let e = btf.member_offset("vm_area_struct", m).unwrap_err();
            assert!(matches!(e, BtfError::Bitfield { .. }), "{m}: {e:?}");
            assert!(btf.member_size("vm_area_struct", m).is_err());
        }
        for m in ["x", "y"] {
            let e = btf.member_offset("old_bits", m).unwrap_err();
            assert!(matches!(e, BtfError::Bitfield { .. }), "{m}: {e:?}");
        }
        assert!(
            btf.member_offset("old_bits", "x")
                .unwrap_err()
                .to_string()
                .contains("old_bits.x is a bitfield")
        );
    }

    #[test]
    fn enums() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        assert_eq!(btf.enum_value("pid_type", "PIDTYPE_TGID").unwrap(), 1);
        assert_eq!(btf.enum_value("pid_type", "PIDTYPE_MAX").unwrap(), 4);
        assert_eq!(btf.enum_value("signed_e", "NEG").unwrap(), -5);
        assert_eq!(btf.enum_value("unsigned_e", "BIG").unwrap(), 0xffff_ffff);
        assert_eq!(btf.enum_value("big_e", "HIGH").unwrap(), 0x1_0000_0002);
        assert_eq!(btf.enum_value("big_e", "MAX").unwrap(), -1);
        let e = btf.enum_value("pid_type", "PIDTYPE_SID").unwrap_err();
        assert_eq!(
            e.to_string(),
            "enum pid_type has no enumerator PIDTYPE_SID in BTF"
        );
        assert!(matches!(
            btf.enum_value("nope", "X"),
            Err(BtfError::NoType { .. })
        ));
        // A struct name is not an enum.
        assert!(matches!(
            btf.enum_value("file", "X"),
            Err(BtfError::NoType { .. })
        ));
    }

    #[test]
    fn missing_names() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        let e = btf.struct_size("task_struct").unwrap_err();
        assert_eq!(
            e.to_string(),
            "BTF has no struct, union or enum named task_struct"
        );
        assert!(matches!(
            btf.member_offset("pid_type", "x"),
            Err(BtfError::NoType { .. })
        ));
        assert!(matches!(
            btf.member_offset("file", "nope"),
            Err(BtfError::NoMember { .. })
        ));
    }

    fn expect_malformed(data: &[u8], want: &str) {
        match Btf::from_bytes(data) {
            Err(BtfError::Malformed(m)) => assert!(m.contains(want), "wanted {want:?} in {m:?}"),
            other => panic!("wanted Malformed({want:?}), got {other:?}"),
        }
    }

    #[test]
    fn malformed_blobs() {
        let good = sample();
        expect_malformed(&[], "too short");
        expect_malformed(&good[..10], "too short");

        let mut be = good.clone();
        be.swap(0, 1);
        expect_malformed(&be, "big-endian");

        let mut bad = good.clone();
        bad[0] = 0;
        expect_malformed(&bad, "bad magic");

        let mut bad = good.clone();
        bad[2] = 2;
        expect_malformed(&bad, "version");

        // Truncated: the string section runs past the end.
        expect_malformed(&good[..good.len() - 1], "string section");

        // Header length larger than the blob.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&(good.len() as u32 + 1).to_le_bytes());
        expect_malformed(&bad, "header length");

        // Type section length cut mid-record.
        let mut bad = good.clone();
        let type_len = le32(&good, 12);
        bad[12..16].copy_from_slice(&(type_len - 4).to_le_bytes());
        expect_malformed(&bad, "type");

        // Unknown kind in the first type.
        let mut bad = good.clone();
        bad[HEADER_LEN + 7] = 25;
        expect_malformed(&bad, "unknown kind 25");

        // Name offset outside the string table.
        let mut bad = good.clone();
        bad[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        expect_malformed(&bad, "name offset");

        // String section not NUL-terminated.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] = b'x';
        expect_malformed(&bad, "NUL");
    }

    #[test]
    fn dangling_and_cyclic_type_references() {
        let mut b = Builder::new();
        let t1 = b.simple(KIND_TYPEDEF, "loop_a", 2);
        b.simple(KIND_TYPEDEF, "loop_b", t1);
        b.strukt(
            "s",
            8,
            &[("cyc", t1, 0, 0), ("dangling", 99, 0, 0), ("v", 0, 0, 0)],
        );
        let btf = Btf::from_bytes(&b.build()).unwrap();
        assert_eq!(btf.member_offset("s", "cyc").unwrap(), 0);
        assert!(matches!(
            btf.member_size("s", "cyc"),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(
            btf.member_size("s", "dangling"),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(
            btf.member_size("s", "v"),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(
            btf.member_offset("s", "cyc.x"),
            Err(BtfError::Malformed(_))
        ));
    }

    #[test]
    fn empty_blob_parses() {
        let btf = Btf::from_bytes(&Builder::new().build()).unwrap();
        assert_eq!(btf.type_count(), 0);
        assert!(matches!(btf.struct_size("x"), Err(BtfError::NoType { .. })));
    }

    #[test]
    fn missing_file() {
        let e = Btf::from_file(Path::new("/nonexistent/btf")).unwrap_err();
        assert!(matches!(e, BtfError::Io { .. }));
        assert!(e.to_string().contains("/nonexistent/btf"), "{e}");
    }

    #[test]
    fn vmlinux_if_readable() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if std::fs::File::open(path).is_err() {
            eprintln!("{} not readable; skipping", path.display());
            return;
        }
        let t = std::time::Instant::now();
        let btf = Btf::from_file(path).unwrap();
        eprintln!("parsed {} types in {:?}", btf.type_count(), t.elapsed());

        let ts = btf.struct_size("task_struct").unwrap();
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        assert!(pid < ts);
        assert_eq!(btf.member_size("task_struct", "pid").unwrap(), 4);
        let se = btf.member_offset("task_struct", "se").unwrap();
        let vr = btf.member_offset("sched_entity", "vruntime").unwrap();
        assert_eq!(
            btf.member_offset("task_struct", "se.vruntime").unwrap(),
            se + vr
        );

        let vma = btf.struct_size("vm_area_struct").unwrap();
        let file = btf.member_offset("vm_area_struct", "vm_file").unwrap();
        assert!(file + 8 <= vma);
        assert_eq!(btf.member_size("vm_area_struct", "vm_file").unwrap(), 8);
        let flags = btf.member_offset("vm_area_struct", "vm_flags").unwrap();
        assert!(flags < vma);
        assert_eq!(btf.member_size("vm_area_struct", "vm_flags").unwrap(), 8);

        let f_inode = btf.member_offset("file", "f_inode").unwrap();
        assert!(f_inode < btf.struct_size("file").unwrap());
        let i_ino = btf.member_offset("inode", "i_ino").unwrap();
        assert!(i_ino < btf.struct_size("inode").unwrap());
        let s_dev = btf.member_offset("super_block", "s_dev").unwrap();
        assert!(s_dev < btf.struct_size("super_block").unwrap());
        assert_eq!(btf.member_size("super_block", "s_dev").unwrap(), 4);

        let max = btf.enum_value("pid_type", "PIDTYPE_MAX").unwrap();
        let tgid = btf.enum_value("pid_type", "PIDTYPE_TGID").unwrap();
        assert!(tgid < max);
    }
}
