//! Reads every parameter and buffer of a TorchScript archive (OpenAI's official `.pt` files)
//! through the C++ shim in `csrc/jit_shim.cpp`, without running the archive's graph.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;

use tch::Tensor;

extern "C" {
    fn typoclip_jit_named_tensors(
        path: *const c_char,
        cb: extern "C" fn(*mut c_void, *const c_char, *mut c_void),
        ctx: *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn typoclip_free_str(s: *mut c_char);
}

extern "C" fn collect(ctx: *mut c_void, name: *const c_char, tensor: *mut c_void) {
    // SAFETY: `ctx` is the `Vec` passed by `named_tensors` below, alive for the whole call;
    // `name` is a NUL-terminated string owned by the shim for the duration of the callback;
    // `tensor` is a heap-allocated `torch::Tensor*` whose ownership the shim hands to us.
    unsafe {
        let out = &mut *(ctx as *mut Vec<(String, Tensor)>);
        let name = CStr::from_ptr(name).to_string_lossy().into_owned();
        out.push((name, Tensor::from_ptr(tensor as *mut torch_sys::C_tensor)));
    }
}

/// The message a C++ shim (`csrc/`) returned through its `err` out-parameter, freed.
///
/// SAFETY: `err` is null or a malloc'd NUL-terminated string not used after this call.
pub(crate) unsafe fn shim_message(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error in libtorch".to_string();
    }
    let message = CStr::from_ptr(err).to_string_lossy().into_owned();
    typoclip_free_str(err);
    message
}

/// All named parameters and buffers of the TorchScript module at `path`, loaded on the CPU.
pub fn named_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the duration of the call; see `collect`.
    let rc = unsafe {
        typoclip_jit_named_tensors(
            c_path.as_ptr(),
            collect,
            &mut out as *mut _ as *mut c_void,
            &mut err,
        )
    };
    if rc != 0 {
        // SAFETY: the shim sets `err` to null or a malloc'd message, read and freed once here.
        let msg = unsafe { shim_message(err) };
        // libtorch messages carry a C++ backtrace: keep the first line.
        return Err(msg.lines().next().unwrap_or("").to_string());
    }
    Ok(out)
}
