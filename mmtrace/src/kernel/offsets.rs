//! Builds the eBPF programs' [`Config`] for the running kernel: struct member
//! offsets from BTF, tracepoint field offsets from tracefs `format` files.
//! Each lookup that fails names the struct/field or tracepoint it needed.
use std::path::Path;

use mmtrace_common::Config;

use super::{
    btf::{Btf, BtfError},
    tracefs::{self, Format, TracefsError},
};

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("kernel BTF lacks what mmtrace needs ({0}); this kernel is not supported")]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("unexpected tracepoint layout: {0}")]
    Layout(String),
}

/// Optional features this kernel does or does not offer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Features {
    /// `exceptions:page_fault_user` exists (x86): write and copy-on-write
    /// faults can be told apart.
    pub write_faults: bool,
    /// `mm_struct.mm_lock_seq` exists: the per-CPU vma cache is safe.
    pub vma_cache: bool,
    /// `sched_process_exit` has `group_dead` (6.16+).
    pub exit_group_dead: bool,
}

/// The tracepoints mmtrace attaches to: (category, event, required).
pub const TRACEPOINTS: &[(&str, &str, bool)] = &[
    ("filemap", "mm_filemap_add_to_page_cache", true),
    ("filemap", "mm_filemap_delete_from_page_cache", true),
    ("filemap", "mm_filemap_fault", true),
    ("filemap", "mm_filemap_map_pages", true),
    ("task", "task_newtask", true),
    ("sched", "sched_process_exit", true),
    ("exceptions", "page_fault_user", false),
    ("exceptions", "page_fault_kernel", false),
];

fn off(f: &Format, name: &str, sizes: &[u32]) -> Result<u32, TracefsError> {
    Ok(f.field_sized(name, sizes)?.offset)
}

/// Computes the configuration for this kernel.
pub fn compute(
    btf: &Btf,
    tracefs_root: &Path,
    self_tgid: u32,
) -> Result<(Config, Features), OffsetsError> {
    let mut c = Config {
        self_tgid,
        // Possible CPUs, the range of bpf_map_lookup_percpu_elem.
        nr_cpus: aya::util::nr_cpus().map(|n| n as u32).unwrap_or(1),
        ..Config::default()
    };
    let mut feat = Features::default();

    c.task_mm = btf.member_offset("task_struct", "mm")?;
    c.task_min_flt = btf.member_offset("task_struct", "min_flt")?;
    c.task_maj_flt = btf.member_offset("task_struct", "maj_flt")?;
    c.vma_vm_start = btf.member_offset("vm_area_struct", "vm_start")?;
    c.vma_vm_end = btf.member_offset("vm_area_struct", "vm_end")?;
    c.vma_vm_flags = btf.member_offset("vm_area_struct", "vm_flags")?;
    c.vma_vm_pgoff = btf.member_offset("vm_area_struct", "vm_pgoff")?;
    c.vma_vm_file = btf.member_offset("vm_area_struct", "vm_file")?;
    c.file_f_inode = btf.member_offset("file", "f_inode")?;
    c.inode_i_ino = btf.member_offset("inode", "i_ino")?;
    c.inode_i_sb = btf.member_offset("inode", "i_sb")?;
    c.sb_s_dev = btf.member_offset("super_block", "s_dev")?;
    // seqcount_t { unsigned sequence; }: present with CONFIG_PER_VMA_LOCK.
    match btf.member_offset("mm_struct", "mm_lock_seq") {
        Ok(o) if btf.member_size("mm_struct", "mm_lock_seq").unwrap_or(0) >= 4 => {
            c.mm_lock_seq = o;
            c.vma_cache = 1;
            feat.vma_cache = true;
        }
        _ => c.mm_lock_seq = Config::ABSENT,
    }

    let add = tracefs::read_format(tracefs_root, "filemap", "mm_filemap_add_to_page_cache")?;
    let del = tracefs::read_format(tracefs_root, "filemap", "mm_filemap_delete_from_page_cache")?;
    c.tp_cache_ino = off(&add, "i_ino", &[8])?;
    c.tp_cache_index = off(&add, "index", &[8])?;
    c.tp_cache_dev = off(&add, "s_dev", &[4])?;
    c.tp_cache_order = off(&add, "order", &[1])?;
    // The delete program reads with the same offsets: insist they agree.
    for (name, o) in [
        ("i_ino", c.tp_cache_ino),
        ("index", c.tp_cache_index),
        ("s_dev", c.tp_cache_dev),
        ("order", c.tp_cache_order),
    ] {
        if del.field(name)?.offset != o {
            return Err(OffsetsError::Layout(format!(
                "mm_filemap_delete_from_page_cache.{name} differs from mm_filemap_add_to_page_cache"
            )));
        }
    }
    let fault = tracefs::read_format(tracefs_root, "filemap", "mm_filemap_fault")?;
    c.tp_fault_ino = off(&fault, "i_ino", &[8])?;
    c.tp_fault_dev = off(&fault, "s_dev", &[4])?;
    let map = tracefs::read_format(tracefs_root, "filemap", "mm_filemap_map_pages")?;
    c.tp_map_ino = off(&map, "i_ino", &[8])?;
    c.tp_map_dev = off(&map, "s_dev", &[4])?;
    c.tp_map_index = off(&map, "index", &[8])?;
    c.tp_map_last_index = off(&map, "last_index", &[8])?;
    let newtask = tracefs::read_format(tracefs_root, "task", "task_newtask")?;
    c.tp_newtask_pid = off(&newtask, "pid", &[4])?;
    c.tp_newtask_clone_flags = off(&newtask, "clone_flags", &[8])?;
    let exit = tracefs::read_format(tracefs_root, "sched", "sched_process_exit")?;
    match exit.field_sized("group_dead", &[1]) {
        Ok(f) => {
            c.tp_exit_group_dead = f.offset;
            feat.exit_group_dead = true;
        }
        Err(_) => c.tp_exit_group_dead = Config::ABSENT,
    }
    // Raw tracepoints: the arguments are TP_PROTO's, no offsets needed.
    if tracefs_root
        .join("events/exceptions/page_fault_user")
        .is_dir()
    {
        c.write_faults = 1;
        feat.write_faults = true;
    }
    Ok((c, feat))
}
