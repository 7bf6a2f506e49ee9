//! The Rust mirrors in `src/layout.rs` against `bpf/lanrage_xdp.h`, the one
//! definition: a small C program includes the header and prints every size,
//! alignment, field offset and counter value with `sizeof`/`offsetof`; the
//! test prints what Rust believes in the same format and compares the two.
//! (`lanrage_xdp.c` also `_Static_assert`s the sizes for the BPF target.)
//!
//! Needs a host C compiler (`$CC` or `cc`) and the Linux UAPI headers; skips
//! with a notice without them unless `LANRAGE_REQUIRE_PRIVILEGED=1`.

use std::fmt::Write as _;
use std::mem::{align_of, offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use lanrage_ebpf::{Config, Counter, RouteKey, RouteValue};
use lanrage_test_support::privileged::skip_or_fail;

/// One struct: C name, size, alignment, and its fields as
/// (name, offset, size).
struct Layout {
    c_name: &'static str,
    size: usize,
    align: usize,
    fields: Vec<(&'static str, usize, usize)>,
}

macro_rules! layout {
    ($ty:ty, $c_name:literal, [$($field:ident: $fty:ty),+ $(,)?]) => {{
        // Fails to compile if a Rust field is missing from this list's types.
        let _check = |v: $ty| { $(let _: $fty = v.$field;)+ };
        Layout {
            c_name: $c_name,
            size: size_of::<$ty>(),
            align: align_of::<$ty>(),
            fields: vec![$((stringify!($field), offset_of!($ty, $field), size_of::<$fty>())),+],
        }
    }};
}

fn rust_layouts() -> Vec<Layout> {
    vec![
        layout!(RouteKey, "lrg_route_key", [src_addr: u32, src_port: u16, _pad: u16, receiver_index: u32]),
        layout!(RouteValue, "lrg_route_value", [dst_addr: u32, dst_port: u16, _pad: u16, last_seen_ns: u64]),
        layout!(Config, "lrg_config", [relay_addr: u32, relay_port: u16, _pad: u16]),
    ]
}

fn c_enumerator(counter: Counter) -> String {
    format!("LRG_{}", counter.name().to_ascii_uppercase())
}

#[test]
fn rust_layouts_match_the_c_header() {
    let layouts = rust_layouts();
    // Each struct's fields must tile it exactly, so no implicit padding
    // (hash keys are compared bytewise) can hide on either side.
    for l in &layouts {
        let mut end = 0;
        for &(name, offset, size) in &l.fields {
            assert_eq!(offset, end, "{}.{name} leaves a hole before it", l.c_name);
            end = offset + size;
        }
        assert_eq!(end, l.size, "{} has trailing padding", l.c_name);
    }

    let mut program = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"lanrage_xdp.h\"\nint main(void) {\n",
    );
    let mut expected = String::new();
    for l in &layouts {
        let s = l.c_name;
        writeln!(
            program,
            "printf(\"struct {s} size %zu align %zu\\n\", sizeof(struct {s}), _Alignof(struct {s}));"
        )
        .unwrap();
        writeln!(expected, "struct {s} size {} align {}", l.size, l.align).unwrap();
        for &(f, offset, size) in &l.fields {
            writeln!(
                program,
                "printf(\"field {s}.{f} offset %zu size %zu\\n\", offsetof(struct {s}, {f}), sizeof(((struct {s} *)0)->{f}));"
            )
            .unwrap();
            writeln!(expected, "field {s}.{f} offset {offset} size {size}").unwrap();
        }
    }
    for counter in Counter::ALL {
        let e = c_enumerator(counter);
        writeln!(program, "printf(\"enum {e} %d\\n\", (int){e});").unwrap();
        writeln!(expected, "enum {e} {}", counter as u32).unwrap();
    }
    // The C enum must have no slot Rust doesn't know.
    writeln!(
        program,
        "printf(\"enum LRG_COUNTER_MAX %d\\n\", (int)LRG_COUNTER_MAX);"
    )
    .unwrap();
    writeln!(expected, "enum LRG_COUNTER_MAX {}", Counter::ALL.len()).unwrap();
    program.push_str("return 0;\n}\n");

    let Some(printed) = run_c(&program) else {
        return;
    };
    assert_eq!(
        printed, expected,
        "the Rust mirrors (left: the C header, right: Rust) disagree"
    );
}

/// Compiles and runs `program` against the header; `None` = skipped.
fn run_c(program: &str) -> Option<String> {
    let dir = std::env::temp_dir().join(format!("lanrage-ebpf-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let _cleanup = RemoveDir(dir.clone());
    let source = dir.join("layout.c");
    let binary = dir.join("layout");
    std::fs::write(&source, program).expect("write layout.c");
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bpf");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let output = match Command::new(&cc)
        .arg("-std=c11")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(&include)
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            skip_or_fail(
                "rust_layouts_match_the_c_header",
                &format!("no C compiler `{cc}`: {e}"),
            );
            return None;
        }
    };
    assert!(
        output.status.success(),
        "compiling the layout probe failed:\n{}\n{program}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = Command::new(&binary)
        .output()
        .expect("run the layout probe");
    assert!(run.status.success(), "the layout probe failed");
    Some(String::from_utf8(run.stdout).expect("ASCII output"))
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
