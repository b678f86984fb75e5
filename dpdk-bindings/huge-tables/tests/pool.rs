//! The allocator against the kernel's real hugetlb pool (needs root to reserve pages; each test
//! runs in its own process under nextest, so each starts with the allocator disabled).

use huge_tables::{HugeTables, MIN_BYTES, PAGE};

#[global_allocator]
static ALLOC: HugeTables = HugeTables;

fn meminfo(name: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// At least `pages` free 2 MiB pages in the pool.
fn reserve(pages: u64) {
    let (total, free) = (meminfo("HugePages_Total:"), meminfo("HugePages_Free:"));
    if free < pages {
        let knob = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
        std::fs::write(knob, (total + pages - free).to_string()).expect("reserve hugepages (run as root)");
    }
    assert!(meminfo("HugePages_Free:") >= pages, "could not reserve {pages} hugepages");
}

/// The page size the kernel maps `addr` with, from `/proc/self/smaps` (kB).
fn kernel_page_kb(addr: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-') && !r.ends_with(':')) {
            let (lo, hi) = range.split_once('-')?;
            let (lo, hi) = (usize::from_str_radix(lo, 16).ok()?, usize::from_str_radix(hi, 16).ok()?);
            inside = (lo..hi).contains(&addr);
        } else if inside {
            if let Some(v) = line.strip_prefix("KernelPageSize:") {
                return v.trim().trim_end_matches("kB").trim().parse().ok();
            }
        }
    }
    None
}

#[test]
fn a_large_table_lands_on_hugepages_and_keeps_its_entries_as_it_grows_and_shrinks() {
    reserve(64);
    huge_tables::enable();
    let n = MIN_BYTES / 8;
    let mut table: Vec<u64> = Vec::with_capacity(n);
    assert_eq!(huge_tables::stats().hugepage_bytes, MIN_BYTES, "{:?}", huge_tables::stats());
    assert_eq!(table.as_ptr() as usize % PAGE, 0);
    table.extend((0..n as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    assert_eq!(kernel_page_kb(table.as_ptr() as usize), Some(2048), "the table is not on 2 MiB pages");
    // Growing past its capacity: a new mapping, the entries copied.
    for i in n as u64..4 * n as u64 {
        table.push(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    assert!(table.iter().enumerate().all(|(i, v)| *v == (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    assert_eq!(kernel_page_kb(table.as_ptr() as usize), Some(2048));
    assert_eq!(huge_tables::stats().hugepage_bytes, table.capacity() * 8);
    assert!(huge_tables::stats().peak_hugepage_bytes >= table.capacity() * 8);
    assert_eq!(huge_tables::stats().fallbacks, 0);
    let copies = huge_tables::stats().copies;
    assert!(copies >= 1);
    // Shrunk below the threshold it moves to the system allocator, contents kept.
    table.truncate(1000);
    table.shrink_to_fit();
    assert!(table.iter().enumerate().all(|(i, v)| *v == (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    assert_eq!(huge_tables::stats().hugepage_bytes, 0);
    assert_eq!(huge_tables::stats().copies, copies + 1);
    drop(table);
    // Small allocations never go to the pool.
    let small = vec![7u8; MIN_BYTES - 1];
    assert_eq!(huge_tables::stats().hugepage_bytes, 0);
    assert_eq!(small.iter().map(|&b| u64::from(b)).sum::<u64>(), 7 * (MIN_BYTES as u64 - 1));
}

#[test]
fn a_table_outgrowing_the_system_allocator_moves_onto_the_pool_and_back_when_freed() {
    reserve(16);
    let mut table: Vec<u32> = (0..1000).collect();
    huge_tables::enable();
    table.extend(1000..(MIN_BYTES / 4) as u32 + 1);
    assert!(huge_tables::stats().hugepage_bytes >= MIN_BYTES);
    assert!(table.iter().enumerate().all(|(i, v)| *v == i as u32));
    let zeros = vec![0u64; MIN_BYTES / 8];
    assert!(zeros.iter().all(|&z| z == 0), "a zeroed table from the pool reads as zeros");
    drop((table, zeros));
    assert_eq!(huge_tables::stats().hugepage_bytes, 0);
}

#[test]
fn nothing_goes_to_the_pool_before_enable() {
    reserve(16);
    let table = vec![1u8; 4 * MIN_BYTES];
    assert_eq!(huge_tables::stats(), huge_tables::Stats::default());
    assert_ne!(kernel_page_kb(table.as_ptr() as usize), Some(2048));
}

#[test]
fn an_allocation_the_pool_cannot_hold_is_served_by_the_system_allocator_and_counted() {
    huge_tables::enable();
    // More pages than the pool has free: the kernel refuses the mapping at mmap (no
    // MAP_NORESERVE), and the system allocator serves it.
    let pages = meminfo("HugePages_Free:") as usize + 500;
    let mut table: Vec<u8> = Vec::with_capacity(pages * PAGE);
    assert_eq!(huge_tables::stats().fallbacks, 1);
    assert_eq!(huge_tables::stats().hugepage_bytes, 0);
    table.extend(std::iter::repeat_n(3u8, 4096));
    table[..4096].iter().for_each(|&b| assert_eq!(b, 3));
}
