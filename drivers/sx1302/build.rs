//! Build script of berrygw-sx1302: picks the libloragw implementation the
//! crate links against and generates its Rust bindings.
//!
//! - no feature: nothing to do, the crate is pure Rust (no C compiler, no
//!   libclang) and `Sx1302Radio::open` says how to rebuild;
//! - `sx1302`: compiles Semtech's sx1302_hal V2.1.0 (`libloragw/src/*.c` and
//!   the one libtools file it uses) from the tree named by `SX1302_HAL_DIR`,
//!   writing the `config.h` the HAL's Makefile would write into OUT_DIR;
//! - `hal-double`: compiles our C test double (`hal-double/`).
//!
//! Both paths then go through the same `bindgen` call, so the Rust wrapper is
//! compiled against whichever header was chosen, unchanged.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(all(feature = "sx1302", feature = "hal-double"))]
    fail(
        "the features `sx1302` and `hal-double` exclude each other: `sx1302` links Semtech's \
         libloragw, `hal-double` links berrygw's test double of it. Enable one of them \
         (tests: `--features hal-double`; gateways: `--features sx1302`), not both \
         (so not `--all-features` either).",
    );
    #[cfg(all(feature = "sx1302", not(feature = "hal-double")))]
    hal::build_semtech_hal();
    #[cfg(all(feature = "hal-double", not(feature = "sx1302")))]
    hal::build_double();
}

/// Stops the build with a message that says what to do.
#[cfg(any(feature = "sx1302", feature = "hal-double"))]
fn fail(message: &str) -> ! {
    eprintln!("\nerror: berrygw-sx1302: {message}\n");
    std::process::exit(1)
}

#[cfg(any(feature = "sx1302", feature = "hal-double"))]
mod hal {
    use std::env;
    #[cfg(feature = "sx1302")]
    use std::fs;
    #[cfg(feature = "sx1302")]
    use std::path::Path;
    use std::path::PathBuf;

    use super::fail;

    /// The sx1302_hal release berrygw is written against.
    #[cfg(feature = "sx1302")]
    const HAL_VERSION: &str = "2.1.0";

    /// What to do when SX1302_HAL_DIR is missing or wrong.
    #[cfg(feature = "sx1302")]
    fn hal_dir_help(problem: &str) -> String {
        format!(
            "{problem}\n\n\
             The `sx1302` feature compiles Semtech's sx1302_hal V{HAL_VERSION} from source \
             (it is on no package registry, and berrygw never ships its sources). To build:\n\n\
             \x20   curl -fL -o sx1302_hal-{HAL_VERSION}.tar.gz \\\n\
             \x20       https://github.com/Lora-net/sx1302_hal/archive/refs/tags/V{HAL_VERSION}.tar.gz\n\
             \x20   mkdir sx1302_hal\n\
             \x20   tar -xzf sx1302_hal-{HAL_VERSION}.tar.gz -C sx1302_hal --strip-components=1\n\
             \x20   SX1302_HAL_DIR=\"$PWD/sx1302_hal\" \\\n\
             \x20       cargo build --release --features sx1302\n\n\
             SX1302_HAL_DIR must name the top of that tree (the folder holding `VERSION`, \
             `libloragw/` and `libtools/`). It also needs a C compiler and libclang \
             (Debian: `apt-get install build-essential libclang-dev`).\n\
             To build berrygw without the concentrator driver, leave out `--features sx1302`."
        )
    }

    /// Compiles Semtech's libloragw from SX1302_HAL_DIR and generates bindings to it.
    #[cfg(feature = "sx1302")]
    pub fn build_semtech_hal() {
        println!("cargo:rerun-if-env-changed=SX1302_HAL_DIR");
        let Some(dir) = env::var_os("SX1302_HAL_DIR") else {
            fail(&hal_dir_help("the `sx1302` feature is on but SX1302_HAL_DIR is not set."));
        };
        let root = PathBuf::from(dir);
        let lib = root.join("libloragw");
        for needed in [
            root.join("VERSION"),
            lib.join("library.cfg"),
            lib.join("inc/loragw_hal.h"),
            lib.join("src/loragw_hal.c"),
            root.join("libtools/src/tinymt32.c"),
            root.join("libtools/inc/tinymt32.h"),
        ] {
            if !needed.is_file() {
                fail(&hal_dir_help(&format!(
                    "SX1302_HAL_DIR={} does not look like an sx1302_hal source tree: {} is missing.",
                    root.display(),
                    needed.display()
                )));
            }
        }
        let version = read(&root.join("VERSION")).trim().to_string();
        if version != HAL_VERSION {
            println!(
                "cargo:warning=SX1302_HAL_DIR holds sx1302_hal {version}; berrygw is written and \
                 tested against V{HAL_VERSION}"
            );
        }
        println!("cargo:rerun-if-changed={}", root.join("VERSION").display());
        println!("cargo:rerun-if-changed={}", lib.join("library.cfg").display());
        println!("cargo:rerun-if-changed={}", lib.join("src").display());
        println!("cargo:rerun-if-changed={}", lib.join("inc").display());

        let out = out_dir();
        write_config_h(&out, &version, &read(&lib.join("library.cfg")));

        let mut sources: Vec<PathBuf> = match fs::read_dir(lib.join("src")) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "c"))
                .collect(),
            Err(e) => fail(&format!("cannot list {}: {e}", lib.join("src").display())),
        };
        sources.sort();
        // loragw_debug.c draws its test payloads from libtools' tinymt32.
        sources.push(root.join("libtools/src/tinymt32.c"));

        let includes = vec![out.clone(), lib.join("inc"), root.join("libtools/inc")];
        let mut build = cc::Build::new();
        build
            .files(&sources)
            .includes(&includes)
            // As the HAL's Makefile: -O2 -std=c99 (the sources set their own
            // _XOPEN_SOURCE / _GNU_SOURCE where they need POSIX).
            .std("c99")
            .opt_level(2)
            // The HAL is not ours to fix: keep its warnings out of cargo's output.
            .warnings(false)
            .extra_warnings(false)
            .cargo_warnings(false);
        build.compile("loragw");
        // librt for clock_gettime on old glibc, libm for the RSSI maths, as the Makefile links.
        println!("cargo:rustc-link-lib=rt");
        println!("cargo:rustc-link-lib=m");

        generate_bindings(&includes, false);
    }

    /// Writes the `config.h` the HAL's Makefile generates from VERSION and library.cfg.
    #[cfg(feature = "sx1302")]
    fn write_config_h(out: &Path, version: &str, library_cfg: &str) {
        let mut text = String::from(
            "/* Generated by berrygw-sx1302's build.rs, as sx1302_hal's libloragw Makefile would. */\n\
             #ifndef _LORAGW_CONFIGURATION_H\n#define _LORAGW_CONFIGURATION_H\n",
        );
        text.push_str(&format!("#define LIBLORAGW_VERSION \"{version}\"\n"));
        // The Makefile writes these DEBUG_* switches; library.cfg sets most of them.
        for name in [
            "DEBUG_AUX",
            "DEBUG_COM",
            "DEBUG_MCU",
            "DEBUG_I2C",
            "DEBUG_REG",
            "DEBUG_HAL",
            "DEBUG_GPS",
            "DEBUG_GPIO",
            "DEBUG_LBT",
            "DEBUG_RAD",
            "DEBUG_CAL",
            "DEBUG_SX1302",
            "DEBUG_FTIME",
        ] {
            let value = cfg_value(library_cfg, name).unwrap_or(0);
            text.push_str(&format!("#define {name} {value}\n"));
        }
        text.push_str("#endif\n");
        let path = out.join("config.h");
        if let Err(e) = fs::write(&path, text) {
            fail(&format!("cannot write {}: {e}", path.display()));
        }
    }

    /// `NAME= 1` from library.cfg (make syntax), as a number.
    #[cfg(feature = "sx1302")]
    fn cfg_value(library_cfg: &str, name: &str) -> Option<u32> {
        library_cfg.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            if key.trim() != name {
                return None;
            }
            value.split('#').next()?.trim().parse().ok()
        })
    }

    /// Compiles berrygw's C double of the libloragw API and generates bindings to it.
    #[cfg(feature = "hal-double")]
    pub fn build_double() {
        let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
        let dir = manifest.join("hal-double");
        for file in ["loragw_hal.h", "loragw_double.h", "loragw_double.c"] {
            println!("cargo:rerun-if-changed={}", dir.join(file).display());
        }
        cc::Build::new()
            .file(dir.join("loragw_double.c"))
            .include(&dir)
            .std("c11")
            .warnings(true)
            .extra_warnings(true)
            .warnings_into_errors(true)
            .compile("loragw_double");
        generate_bindings(&[dir], true);
    }

    /// The one bindgen call both HAL flavours go through.
    pub fn generate_bindings(includes: &[PathBuf], double: bool) {
        let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
        let wrapper = manifest.join("src/hal/wrapper.h");
        println!("cargo:rerun-if-changed={}", wrapper.display());
        let mut builder = bindgen::Builder::default()
            .header(wrapper.display().to_string())
            .clang_args(includes.iter().map(|dir| format!("-I{}", dir.display())))
            // Functions the wrapper calls; every one exists in both the HAL and the double.
            .allowlist_function(
                "lgw_(board|rxrf|rxif|demod|txgain)_setconf|lgw_start|lgw_stop|lgw_receive|lgw_send\
                 |lgw_status|lgw_abort_tx|lgw_get_instcnt|lgw_get_eui|lgw_get_temperature|lgw_version_info",
            )
            .allowlist_type("lgw_.*")
            .allowlist_var("LGW_.*|MOD_.*|BW_.*|DR_.*|CR_.*|STAT_.*|IMMEDIATE|TIMESTAMPED|ON_GPS|TX_.*|RX_.*")
            .prepend_enum_name(false)
            .derive_default(true)
            .derive_debug(false)
            .generate_comments(false)
            .layout_tests(true);
        if double {
            builder = builder.clang_arg("-DBERRYGW_HAL_DOUBLE").allowlist_function("double_.*");
        }
        let bindings = match builder.generate() {
            Ok(b) => b,
            Err(e) => fail(&format!(
                "bindgen could not read the libloragw header ({e}). It needs libclang \
                 (Debian: `apt-get install libclang-dev`)."
            )),
        };
        let path = out_dir().join("loragw_bindings.rs");
        if let Err(e) = bindings.write_to_file(&path) {
            fail(&format!("cannot write {}: {e}", path.display()));
        }
    }

    fn out_dir() -> PathBuf {
        match env::var_os("OUT_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => fail("OUT_DIR is not set (build.rs must run under cargo)"),
        }
    }

    #[cfg(feature = "sx1302")]
    fn read(path: &Path) -> String {
        match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => fail(&format!("cannot read {}: {e}", path.display())),
        }
    }
}
