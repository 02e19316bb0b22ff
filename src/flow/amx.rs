//! bf16 products of a frozen masked layer on Intel AMX tiles (Sapphire Rapids and later Xeons).
//!
//! `out += x · Wᵀ` with `x` and `W` rounded to bf16 and the products summed in f32 by
//! `tdpbf16ps`, which multiplies a 16 × 32 bf16 tile of `x` by a 32 × 16 bf16 tile of `Wᵀ` into a
//! 16 × 16 f32 tile, about 16 times what an AVX-512 FMA loop does per cycle. The weight is packed
//! once, in panels of 16 outputs laid out as the tile unit wants them (pairs of consecutive inputs
//! side by side); a panel stores only the inputs its rows can see (the staircase of a frozen MADE
//! layer), rounded up to 32. The instructions are written as inline assembly: Rust has no stable
//! AMX intrinsics, and the kernel needs only six of them.

use half::bf16;

/// Outputs per panel (the columns of a result tile).
const PANEL: usize = 16;
/// Inputs per tile product (32 bf16 = one 64-byte tile row of `x`).
const K_STEP: usize = 32;
/// Rows of a tile.
const TILE_ROWS: usize = 16;

/// Whether this CPU has AMX bf16 tiles and the kernel lets this process use them (asked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    let leaf7 = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
    // The inputs are converted to bf16 with AVX512-BF16, which every AMX CPU has.
    if !(amx_bf16 && amx_tile && std::is_x86_feature_detected!("avx512bf16")) {
        return false;
    }
    // Linux hands out the 8 KB tile state only to processes that ask (ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA); it refuses where the hypervisor or kernel does not support it.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes the process's permission bits.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// One panel of `PANEL` consecutive outputs, reading the first `k` inputs (a multiple of
/// `K_STEP`), stored from `offset` as `k / K_STEP` tiles of (`K_STEP`/2 input pairs × `PANEL` × 2).
#[derive(Clone, Copy, Debug)]
struct Panel {
    offset: usize,
    k: usize,
}

/// A weight (o, i) packed for [`PackedWeight::accumulate`].
pub struct PackedWeight {
    data: Vec<bf16>,
    panels: Vec<Panel>,
    outputs: usize,
    inputs: usize,
    /// The widest panel's `k`: how far rows of `x` are padded.
    k_max: usize,
}

impl PackedWeight {
    /// Packs `w` (o, i, row-major), whose row `r` is zero beyond its first `cols(r)` inputs
    /// (`cols` non-decreasing in `r` for the panels to shrink; any `cols ≥` the row's support is
    /// correct).
    pub fn pack(w: &[f32], outputs: usize, inputs: usize, cols: impl Fn(usize) -> usize) -> Self {
        assert_eq!(w.len(), outputs * inputs, "weight of {outputs} × {inputs}");
        let mut panels = Vec::with_capacity(outputs.div_ceil(PANEL));
        let mut offset = 0;
        for start in (0..outputs).step_by(PANEL) {
            let seen = (start..(start + PANEL).min(outputs)).map(&cols).max().unwrap_or(0).min(inputs);
            let k = seen.div_ceil(K_STEP) * K_STEP;
            panels.push(Panel { offset, k });
            offset += k * PANEL;
        }
        let mut data = vec![bf16::ZERO; offset];
        for (p, panel) in panels.iter().enumerate() {
            for kk in 0..panel.k.min(inputs) {
                for n in 0..PANEL {
                    let r = p * PANEL + n;
                    if r < outputs {
                        // Tile row kk/2 holds the pair (kk, kk + 1) of every output side by side.
                        let at = panel.offset + (kk / 2) * PANEL * 2 + n * 2 + kk % 2;
                        data[at] = bf16::from_f32(w[r * inputs + kk]);
                    }
                }
            }
        }
        let k_max = panels.iter().map(|p| p.k).max().unwrap_or(0);
        Self { data, panels, outputs, inputs, k_max }
    }

    /// (outputs, inputs) of the packed weight.
    pub fn shape(&self) -> (usize, usize) {
        (self.outputs, self.inputs)
    }

    /// `out[r] += x[r] · Wᵀ` for the `m` rows of `x` (m, i) and `out` (m, o), on AMX tiles.
    /// Call only where [`available`] is true.
    pub fn accumulate(&self, x: &[f32], out: &mut [f32], m: usize) {
        let (i, o) = (self.inputs, self.outputs);
        assert!(available(), "AMX tiles are not available");
        assert!(x.len() == m * i && out.len() == m * o, "x {} / out {} for {m} rows", x.len(), out.len());
        if m == 0 || self.k_max == 0 {
            return;
        }
        // x in bf16, rows padded to whole tile pairs and inputs to k_max (zeros contribute nothing).
        let rows = m.div_ceil(2 * TILE_ROWS) * 2 * TILE_ROWS;
        let mut a = vec![bf16::ZERO; rows * self.k_max];
        for (dst, src) in a.chunks_exact_mut(self.k_max).zip(x.chunks_exact(i.max(1))) {
            let n = src.len().min(dst.len());
            // SAFETY: AMX CPUs have AVX512-BF16 (checked by `available`).
            unsafe { to_bf16(&src[..n], &mut dst[..n]) };
        }
        let mut tile = [[0f32; PANEL]; TILE_ROWS];
        // SAFETY: AMX is available (asserted) and this thread configures its tiles before use and
        // releases them after; every tile load reads inside `a`, `self.data` or `out`, every
        // store writes inside `tile` or `out` (bounds below).
        unsafe {
            tiles::configure();
            for r0 in (0..rows).step_by(2 * TILE_ROWS) {
                for (pi, pair) in self.panels.chunks(2).enumerate() {
                    // Result tile (j, h): rows r0 + 16h.., outputs (2pi + j)·16..; a whole tile of
                    // `out` accumulates in place, a ragged one (last rows or outputs) through `tile`.
                    let at = |j: usize, h: usize| (r0 + h * TILE_ROWS, (2 * pi + j) * PANEL);
                    let whole = |j: usize, h: usize| {
                        let (first, col0) = at(j, h);
                        first + TILE_ROWS <= m && col0 + PANEL <= o
                    };
                    for j in 0..pair.len() {
                        for h in 0..2 {
                            let (first, col0) = at(j, h);
                            if whole(j, h) {
                                tiles::load_result(j, h, out.as_ptr().add(first * o + col0), o * 4);
                            } else {
                                tiles::zero_result(j, h);
                            }
                        }
                    }
                    let k = pair.iter().map(|p| p.k).max().unwrap_or(0);
                    for kc in (0..k).step_by(K_STEP) {
                        // Rows r0..r0+32 and inputs kc..kc+32 of `a`: inside, since r0 + 32 ≤ rows and
                        // kc + 32 ≤ k ≤ k_max.
                        let a0 = a.as_ptr().add(r0 * self.k_max + kc);
                        let a1 = a0.add(TILE_ROWS * self.k_max);
                        tiles::load_a(a0, a1, self.k_max * 2);
                        for (j, p) in pair.iter().enumerate() {
                            if kc < p.k {
                                // Tile kc/32 of the panel: offset + kc·PANEL .. + 32·PANEL ≤ offset + k·PANEL.
                                tiles::multiply(j, self.data.as_ptr().add(p.offset + kc * PANEL));
                            }
                        }
                    }
                    for j in 0..pair.len() {
                        for h in 0..2 {
                            let (first, col0) = at(j, h);
                            if whole(j, h) {
                                tiles::store_result(j, h, out.as_mut_ptr().add(first * o + col0), o * 4);
                                continue;
                            }
                            tiles::store_result(j, h, tile.as_mut_ptr().cast(), PANEL * 4);
                            let cols = o.saturating_sub(col0).min(PANEL);
                            for (t, row) in tile.iter().enumerate().take(m.saturating_sub(first).min(TILE_ROWS)) {
                                let dst = &mut out[(first + t) * o + col0..(first + t) * o + col0 + cols];
                                for (d, &v) in dst.iter_mut().zip(row) {
                                    *d += v;
                                }
                            }
                        }
                    }
                }
            }
            tiles::release();
        }
    }
}

/// `dst = src` rounded to bf16 (ties to even), 32 at a time with AVX512-BF16 (which, unlike
/// `half`, flushes denormal inputs to zero: below 1e-38, irrelevant to a network's activations).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn to_bf16(src: &[f32], dst: &mut [bf16]) {
    use std::arch::x86_64::{__m512i, _mm512_cvtne2ps_pbh, _mm512_loadu_ps, _mm512_storeu_si512};
    let full = src.len() / 32 * 32;
    for k in (0..full).step_by(32) {
        // SAFETY: k + 32 ≤ full ≤ len of both slices.
        unsafe {
            let lo = _mm512_loadu_ps(src.as_ptr().add(k));
            let hi = _mm512_loadu_ps(src.as_ptr().add(k + 16));
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(k).cast(), packed);
        }
    }
    for (d, &s) in dst[full..].iter_mut().zip(&src[full..]) {
        *d = bf16::from_f32(s);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn to_bf16(src: &[f32], dst: &mut [bf16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16::from_f32(s);
    }
}

/// The AMX instructions, on fixed tile registers: tmm0–tmm3 results (rows 0–15 / 16–31 of the
/// row block × panels 0 / 1 of the pair), tmm4–tmm5 the two 16-row tiles of `x`, tmm6 a panel.
#[cfg(target_arch = "x86_64")]
mod tiles {
    use std::arch::asm;

    #[repr(C, align(64))]
    struct Config([u8; 64]);

    /// Palette 1, all eight tiles 16 rows of 64 bytes.
    pub unsafe fn configure() {
        let mut c = Config([0; 64]);
        c.0[0] = 1;
        for t in 0..8 {
            c.0[16 + 2 * t] = 64;
            c.0[48 + t] = 16;
        }
        asm!("ldtilecfg [{0}]", in(reg) c.0.as_ptr(), options(nostack, readonly));
    }

    pub unsafe fn release() {
        asm!("tilerelease", options(nostack, nomem));
    }

    /// Result tile (panel `j`, rows `h`·16…) = 0.
    pub unsafe fn zero_result(j: usize, h: usize) {
        match (j, h) {
            (0, 0) => asm!("tilezero tmm0", options(nostack, nomem)),
            (1, 0) => asm!("tilezero tmm1", options(nostack, nomem)),
            (0, _) => asm!("tilezero tmm2", options(nostack, nomem)),
            _ => asm!("tilezero tmm3", options(nostack, nomem)),
        }
    }

    /// Result tile (panel `j`, rows `h`·16…) from 16 rows of 16 f32 at `src`, `stride` bytes apart.
    pub unsafe fn load_result(j: usize, h: usize, src: *const f32, stride: usize) {
        match (j, h) {
            (0, 0) => {
                asm!("tileloadd tmm0, [{p} + {s}]", p = in(reg) src, s = in(reg) stride, options(nostack, readonly))
            }
            (1, 0) => {
                asm!("tileloadd tmm1, [{p} + {s}]", p = in(reg) src, s = in(reg) stride, options(nostack, readonly))
            }
            (0, _) => {
                asm!("tileloadd tmm2, [{p} + {s}]", p = in(reg) src, s = in(reg) stride, options(nostack, readonly))
            }
            _ => asm!("tileloadd tmm3, [{p} + {s}]", p = in(reg) src, s = in(reg) stride, options(nostack, readonly)),
        }
    }

    /// Result tile (panel `j`, rows `h`·16…) into 16 rows of 16 f32 at `dst`, `stride` bytes apart.
    pub unsafe fn store_result(j: usize, h: usize, dst: *mut f32, stride: usize) {
        match (j, h) {
            (0, 0) => asm!("tilestored [{p} + {s}], tmm0", p = in(reg) dst, s = in(reg) stride, options(nostack)),
            (1, 0) => asm!("tilestored [{p} + {s}], tmm1", p = in(reg) dst, s = in(reg) stride, options(nostack)),
            (0, _) => asm!("tilestored [{p} + {s}], tmm2", p = in(reg) dst, s = in(reg) stride, options(nostack)),
            _ => asm!("tilestored [{p} + {s}], tmm3", p = in(reg) dst, s = in(reg) stride, options(nostack)),
        }
    }

    /// The two 16-row tiles of `x` at `a0` and `a1`, rows `stride` bytes apart.
    pub unsafe fn load_a(a0: *const half::bf16, a1: *const half::bf16, stride: usize) {
        asm!(
            "tileloadd tmm4, [{a0} + {s}]",
            "tileloadd tmm5, [{a1} + {s}]",
            a0 = in(reg) a0, a1 = in(reg) a1, s = in(reg) stride,
            options(nostack, readonly),
        );
    }

    /// Result tiles of panel `j` (0 or 1) += both tiles of `x` · the panel tile at `b`.
    pub unsafe fn multiply(j: usize, b: *const half::bf16) {
        if j == 0 {
            asm!(
                "tileloadd tmm6, [{b} + {s}]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm5, tmm6",
                b = in(reg) b, s = in(reg) 64usize,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tileloadd tmm6, [{b} + {s}]",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm6",
                b = in(reg) b, s = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod tiles {
    pub unsafe fn configure() {
        unreachable!("AMX is x86_64 only")
    }
    pub unsafe fn release() {}
    pub unsafe fn zero_result(_: usize, _: usize) {}
    pub unsafe fn load_result(_: usize, _: usize, _: *const f32, _: usize) {}
    pub unsafe fn store_result(_: usize, _: usize, _: *mut f32, _: usize) {}
    pub unsafe fn load_a(_: *const half::bf16, _: *const half::bf16, _: usize) {}
    pub unsafe fn multiply(_: usize, _: *const half::bf16) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x · Wᵀ` of the bf16-rounded operands, in f64.
    fn reference(x: &[f32], w: &[f32], m: usize, o: usize, i: usize) -> Vec<f64> {
        let r = |v: f32| bf16::from_f32(v).to_f64();
        let mut out = vec![0.0; m * o];
        for a in 0..m {
            for b in 0..o {
                out[a * o + b] = (0..i).map(|k| r(x[a * i + k]) * r(w[b * i + k])).sum();
            }
        }
        out
    }

    #[test]
    fn tiles_compute_the_bf16_rounded_product() {
        if !available() {
            eprintln!("this CPU (or its kernel) has no AMX tiles: the tile kernel is not exercised here");
            return;
        }
        // 37 outputs (two full panels and a partial one), 70 inputs (k padded to 96), a staircase
        // support, and row counts below, at and above a 32-row tile pair.
        let (o, i) = (37, 70);
        let support = |r: usize| (r * 2).min(i);
        let w: Vec<f32> = (0..o * i)
            .map(|k| if k % i < support(k / i) { ((k * 7919) % 211) as f32 / 105.0 - 1.0 } else { 0.0 })
            .collect();
        let packed = PackedWeight::pack(&w, o, i, support);
        for m in [1usize, 16, 33, 100] {
            let x: Vec<f32> = (0..m * i).map(|k| ((k * 104_729) % 977) as f32 / 300.0 - 1.6).collect();
            let start: Vec<f32> = (0..m * o).map(|k| k as f32 * 0.01).collect();
            let mut out = start.clone();
            packed.accumulate(&x, &mut out, m);
            let want = reference(&x, &w, m, o, i);
            for (k, ((&got, &s), &p)) in out.iter().zip(&start).zip(&want).enumerate() {
                let err = (got as f64 - s as f64 - p).abs();
                assert!(err < 1e-4 * (1.0 + p.abs()), "{m} rows, element {k}: {got} vs {s} + {p}");
            }
        }
    }

    #[test]
    fn panels_keep_only_the_inputs_their_rows_read() {
        // Rows 0–15 read 3 inputs (one 32-input tile), rows 16–19 read 40 (two).
        let (o, i) = (20, 64);
        let support = |r: usize| if r < 16 { 3 } else { 40 };
        let w = vec![1.0f32; o * i];
        let packed = PackedWeight::pack(&w, o, i, support);
        assert_eq!(packed.panels.iter().map(|p| p.k).collect::<Vec<_>>(), vec![32, 64]);
        assert_eq!(packed.data.len(), (32 + 64) * PANEL);
        assert_eq!(packed.k_max, 64);
    }
}
