//! Each program's instruction and stack budget, from the kernel's program
//! info (`BPF_OBJ_GET_INFO_BY_FD`): instructions the verifier processed, the
//! translated (xlated) instruction count, the JITed size, and the largest stack
//! frame the translated code addresses through the frame pointer (r10), so
//! that a change that bloats a program shows in the benchmark's output.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context, Result};
use aya::programs::SchedClassifier;

/// What one loaded program costs in instructions and stack.
#[derive(Clone, Debug)]
pub struct Budget {
    /// Instructions the verifier processed (kernel 5.16+).
    pub verified: Option<u32>,
    pub translated: u32,
    pub jited_bytes: u32,
    /// Bytes below r10 the deepest access of any one frame reaches.
    pub stack_bytes: u32,
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `struct bpf_prog_info` offsets (uapi, stable): `jited_prog_len`,
/// `xlated_prog_len`, `xlated_prog_insns`.
const JITED_LEN: usize = 16;
const XLATED_LEN: usize = 20;
const XLATED_INSNS: usize = 32;
/// Room for every `bpf_prog_info` field this kernel has; the rest stays zero,
/// which the kernel accepts.
const INFO_SIZE: usize = 512;

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn get_info(fd: i32, info: &mut [u8; INFO_SIZE]) -> Result<()> {
    let attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: INFO_SIZE as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the attribute and the info buffer live across the call and have
    // the sizes given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if r < 0 {
        bail!(
            "BPF_OBJ_GET_INFO_BY_FD: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The deepest r10-relative access: loads and stores through r10, and
/// `rX = r10; rX += -N` (a stack address handed to a helper).
fn stack_depth(insns: &[u8]) -> u32 {
    let mut deepest = 0i64;
    let mut fp_copy = [false; 16];
    for i in insns.chunks_exact(8) {
        let (code, regs) = (i[0], i[1]);
        let (dst, src) = ((regs & 0x0f) as usize, (regs >> 4) as usize);
        let off = i64::from(i16::from_ne_bytes([i[2], i[3]]));
        let imm = i64::from(i32::from_ne_bytes([i[4], i[5], i[6], i[7]]));
        match code & 0x07 {
            // LDX: src is the base.
            0x01 if src == 10 => deepest = deepest.max(-off),
            // ST, STX: dst is the base.
            0x02 | 0x03 if dst == 10 => deepest = deepest.max(-off),
            _ => {}
        }
        match code {
            // mov64 dst, src
            0xbf => fp_copy[dst] = src == 10,
            // add64 dst, imm
            0x07 if fp_copy[dst] => deepest = deepest.max(-imm),
            // Any other ALU/load writing dst ends the copy.
            c if matches!(c & 0x07, 0x04 | 0x07 | 0x00 | 0x01) => fp_copy[dst] = false,
            // A call clobbers r1-r5.
            0x85 => fp_copy[1..6].iter_mut().for_each(|f| *f = false),
            _ => {}
        }
    }
    deepest.clamp(0, i64::from(u32::MAX)) as u32
}

/// The budget of a loaded program.
pub fn budget(p: &SchedClassifier) -> Result<Budget> {
    let info = p.info().context("program info")?;
    let fd = info.fd().context("program fd")?;
    let raw = fd.as_fd().as_raw_fd();
    let mut buf = [0u8; INFO_SIZE];
    get_info(raw, &mut buf)?;
    let xlated = u32_at(&buf, XLATED_LEN);
    let jited = u32_at(&buf, JITED_LEN);
    let mut insns = vec![0u8; xlated as usize];
    let mut buf = [0u8; INFO_SIZE];
    buf[XLATED_LEN..XLATED_LEN + 4].copy_from_slice(&xlated.to_ne_bytes());
    buf[XLATED_INSNS..XLATED_INSNS + 8].copy_from_slice(&(insns.as_mut_ptr() as u64).to_ne_bytes());
    get_info(raw, &mut buf)?;
    Ok(Budget {
        verified: info.verified_instruction_count(),
        translated: xlated / 8,
        jited_bytes: jited,
        stack_bytes: stack_depth(&insns),
    })
}
