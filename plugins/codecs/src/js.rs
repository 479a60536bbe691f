//! JavaScript codecs in QuickJS: one runtime per codec, one context per device within it
//! (the script run once in each), every call fenced by a deadline (interrupt handler) and a
//! memory limit.
//!
//! Devices never share a global object or built-ins: what one device's frame does to
//! `Object.prototype` or to a global, another device's reading never sees. A device's own
//! globals persist between its calls, as codecs that keep state expect. The contexts of
//! the least recently heard devices are dropped past [`MAX_DEVICE_CONTEXTS`], or when the
//! runtime holds over half its memory limit, and rebuilt (the script run again) on their
//! next frame.
//!
//! Not for: modules, timers, I/O. The context has the ECMAScript built-ins only (no `std`/`os`
//! modules, no module loader, no `require`), so a codec can compute and nothing else.
//! A failed call is a `DecodeError` for that frame; after running out of memory the runtime
//! is rebuilt from the kept source, because QuickJS may be left half-way through an allocation.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use rquickjs::context::{intrinsic, EvalOptions};
use rquickjs::{Array, Coerced, Context, Ctx, FromJs, Function, Object, Persistent, Runtime, Type, Value};

use crate::{reply, DecodeError, Decoded, Limits, LoadError, UplinkInput};

/// QuickJS's own stack limit. The decode thread needs a native stack comfortably above it
/// (Rust's default 2 MiB for spawned threads is plenty).
const MAX_STACK_BYTES: usize = 256 * 1024;
/// Top-level code runs once at load; it gets this long, or the per-call limit if larger.
const LOAD_TIME: Duration = Duration::from_secs(1);
/// Promise jobs a call may leave behind are run under the same deadline, at most this many.
const MAX_PENDING_JOBS: usize = 1_000;
/// A thrown message is cut to this many bytes.
const MAX_THROWN_BYTES: usize = 400;
/// Device contexts one codec keeps at most (see the module docs).
pub const MAX_DEVICE_CONTEXTS: usize = 256;

/// `JSON.stringify` replacer: a key whose value is `undefined` is kept as `null`, as TTN
/// does, instead of vanishing. (The root call has key "" on a one-key holder.)
const KEEP_UNDEFINED_AS_NULL: &str = "(function (k, v) { \
    return v === undefined && !(k === '' && Object.keys(this).length === 1) ? null : v; })";

/// Built-ins the codec sees: the ECMAScript library, nothing that reaches outside.
type Intrinsics = (
    intrinsic::Date,
    intrinsic::Eval,
    intrinsic::RegExpCompiler,
    intrinsic::RegExp,
    intrinsic::Json,
    intrinsic::Proxy,
    intrinsic::MapSet,
    intrinsic::TypedArrays,
    intrinsic::Promise,
    intrinsic::WeakRef,
);

/// Runs before the codec: a `console` that discards output, as vendor codecs sometimes log.
const PRELUDE: &str = "(function (g) {\n\
    var quiet = function () {};\n\
    g.console = { log: quiet, info: quiet, warn: quiet, error: quiet, debug: quiet };\n\
})(globalThis);";

/// The entry point a codec defines, most preferred first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// TTN v3 / ChirpStack v4: `decodeUplink(input)` returning `{data, warnings, errors}`.
    DecodeUplink,
    /// ChirpStack v3: `Decode(fPort, bytes, variables)` returning the data object.
    ChirpStackV3,
    /// TTN v2: `Decoder(bytes, port)` returning the data object.
    TtnV2,
}

impl EntryPoint {
    const ALL: [EntryPoint; 3] = [EntryPoint::DecodeUplink, EntryPoint::ChirpStackV3, EntryPoint::TtnV2];

    /// The JavaScript function name.
    pub fn function_name(self) -> &'static str {
        match self {
            EntryPoint::DecodeUplink => "decodeUplink",
            EntryPoint::ChirpStackV3 => "Decode",
            EntryPoint::TtnV2 => "Decoder",
        }
    }

    /// Wraps the codec's function into `call(bytes, fPort, recvTimeMs, variables)`.
    /// Building the input object here, in JS, is cheaper than property by property from Rust.
    fn adapter(self) -> &'static str {
        match self {
            EntryPoint::DecodeUplink => {
                "(function (decode) { return function (bytes, fPort, ms, variables) { return decode(\
                 { bytes: bytes, fPort: fPort, recvTime: new Date(ms), variables: variables }); }; })"
            }
            EntryPoint::ChirpStackV3 => {
                "(function (decode) { return function (bytes, fPort, ms, variables) { \
                 return decode(fPort, bytes, variables); }; })"
            }
            EntryPoint::TtnV2 => {
                "(function (decode) { return function (bytes, fPort, ms, variables) { \
                 return decode(bytes, fPort); }; })"
            }
        }
    }
}

/// The deadline shared between a codec and its runtime's interrupt handler.
#[derive(Default)]
struct Watchdog {
    deadline: Cell<Option<Instant>>,
    fired: Cell<bool>,
}

impl Watchdog {
    fn arm(&self, limit: Duration) {
        self.fired.set(false);
        // An unrepresentable deadline (absurd limit) means no deadline.
        self.deadline.set(Instant::now().checked_add(limit));
    }

    fn disarm(&self) {
        self.deadline.set(None);
    }

    /// Called by QuickJS every few thousand operations: true stops the script.
    fn expired(&self) -> bool {
        match self.deadline.get() {
            Some(deadline) if Instant::now() >= deadline => {
                self.fired.set(true);
                true
            }
            _ => false,
        }
    }
}

/// A loaded JavaScript codec. Not `Send`: it lives on the thread that created it.
pub struct JsCodec {
    name: String,
    source: String,
    limits: Limits,
    entry: EntryPoint,
    watchdog: Rc<Watchdog>,
    /// An error only if rebuilding after running out of memory failed: why it did.
    engine: Result<Box<Engine>, String>,
}

impl std::fmt::Debug for JsCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsCodec").field("name", &self.name).field("entry", &self.entry).finish()
    }
}

/// One QuickJS runtime and the per-device contexts in it.
struct Engine {
    // Field order is drop order: every context (and its JS handles) before the runtime.
    devices: HashMap<String, Scope>,
    /// The context the script was checked in at load, handed to the first device heard.
    spare: Option<Scope>,
    /// Calls so far; a scope's `last_use` orders eviction.
    calls: u64,
    runtime: Runtime,
}

/// One device's context: its own globals and built-ins, the script evaluated in it.
struct Scope {
    // Field order is drop order: the JS handles before their context.
    call: Persistent<Function<'static>>,
    replacer: Persistent<Function<'static>>,
    context: Context,
    last_use: u64,
}

impl JsCodec {
    /// Compiles and runs the script once, and finds its entry point.
    pub(crate) fn load(name: &str, source: &str, limits: Limits) -> Result<JsCodec, LoadError> {
        let watchdog = Rc::new(Watchdog::default());
        let (engine, entry) = Engine::start(name, source, &limits, &watchdog)?;
        Ok(JsCodec {
            name: name.to_owned(),
            source: source.to_owned(),
            limits,
            entry,
            watchdog,
            engine: Ok(Box::new(engine)),
        })
    }

    /// The codec's name (its file name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which of the supported entry points the script defines.
    pub fn entry_point(&self) -> EntryPoint {
        self.entry
    }

    pub(crate) fn decode(&mut self, input: &UplinkInput<'_>) -> Result<Decoded, DecodeError> {
        let engine = match &mut self.engine {
            Ok(engine) => engine,
            Err(why) => {
                return Err(DecodeError::Engine(format!(
                    "codec {} could not be restarted after running out of memory ({why}); reload it",
                    self.name
                )))
            }
        };
        let outcome =
            engine.decode(&self.name, &self.source, input, self.entry, &self.limits, &self.watchdog);
        if let Err(DecodeError::OutOfMemory { .. }) = outcome {
            // The script's globals are reset too; that is the price of a clean heap.
            self.engine = Err("restarting".to_owned()); // drop the old heap before building anew
            self.engine = Engine::start(&self.name, &self.source, &self.limits, &self.watchdog)
                .map(|(engine, _)| Box::new(engine))
                .map_err(|e| e.to_string());
        }
        outcome
    }
}

impl Engine {
    fn start(
        name: &str,
        source: &str,
        limits: &Limits,
        watchdog: &Rc<Watchdog>,
    ) -> Result<(Engine, EntryPoint), LoadError> {
        let runtime = Runtime::new().map_err(|e| LoadError::Engine(e.to_string()))?;
        runtime.set_memory_limit(limits.memory_bytes);
        runtime.set_max_stack_size(MAX_STACK_BYTES);
        let handler_watchdog = Rc::clone(watchdog);
        runtime.set_interrupt_handler(Some(Box::new(move || handler_watchdog.expired())));
        let (scope, entry) = Scope::start(&runtime, name, source, limits, watchdog)?;
        Ok((Engine { devices: HashMap::new(), spare: Some(scope), calls: 0, runtime }, entry))
    }

    fn decode(
        &mut self,
        name: &str,
        source: &str,
        input: &UplinkInput<'_>,
        entry: EntryPoint,
        limits: &Limits,
        watchdog: &Watchdog,
    ) -> Result<Decoded, DecodeError> {
        self.calls += 1;
        if !self.devices.contains_key(input.device) {
            let scope = match self.spare.take() {
                Some(scope) => scope,
                None => {
                    self.make_room(limits);
                    Scope::start(&self.runtime, name, source, limits, watchdog)
                        .map(|(scope, _)| scope)
                        .map_err(|e| match e {
                            LoadError::Engine(why) if why.contains("out of memory") => {
                                DecodeError::OutOfMemory { limit: limits.memory_bytes }
                            }
                            other => DecodeError::Engine(format!(
                                "codec {name} could not start for this device: {other}"
                            )),
                        })?
                }
            };
            self.devices.insert(input.device.to_owned(), scope);
        }
        let Some(scope) = self.devices.get_mut(input.device) else {
            return Err(DecodeError::Engine("device context vanished".into()));
        };
        scope.last_use = self.calls;
        scope.decode(input, entry, limits, watchdog)
    }

    /// Drops the least recently used device contexts while too many are kept or the
    /// runtime holds over half its memory limit (always leaving room for one more).
    fn make_room(&mut self, limits: &Limits) {
        let over_memory = |runtime: &Runtime| {
            let used = runtime.memory_usage().memory_used_size.max(0) as u64;
            used > (limits.memory_bytes / 2) as u64
        };
        while !self.devices.is_empty()
            && (self.devices.len() >= MAX_DEVICE_CONTEXTS || over_memory(&self.runtime))
        {
            let oldest = self.devices.iter().min_by_key(|(_, s)| s.last_use).map(|(k, _)| k.clone());
            match oldest {
                Some(key) => drop(self.devices.remove(&key)),
                None => break,
            }
            self.runtime.run_gc();
        }
    }
}

impl Scope {
    /// A fresh context with the script evaluated in it.
    fn start(
        runtime: &Runtime,
        name: &str,
        source: &str,
        limits: &Limits,
        watchdog: &Watchdog,
    ) -> Result<(Scope, EntryPoint), LoadError> {
        let context = Context::custom::<Intrinsics>(runtime).map_err(|e| LoadError::Engine(e.to_string()))?;
        let load_limits = Limits { time: limits.time.max(LOAD_TIME), ..*limits };
        watchdog.arm(load_limits.time);
        let loaded = context.with(|ctx| evaluate(&ctx, name, source, &load_limits, watchdog));
        watchdog.disarm();
        let (call, replacer, entry) = loaded?;
        Ok((Scope { call, replacer, context, last_use: 0 }, entry))
    }

    fn decode(
        &self,
        input: &UplinkInput<'_>,
        entry: EntryPoint,
        limits: &Limits,
        watchdog: &Watchdog,
    ) -> Result<Decoded, DecodeError> {
        self.context.with(|ctx| {
            let restore = |f: &Persistent<Function<'static>>| {
                f.clone().restore(&ctx).map_err(|e| DecodeError::Engine(e.to_string()))
            };
            let (call, replacer) = (restore(&self.call)?, restore(&self.replacer)?);
            watchdog.arm(limits.time);
            let answer = call_codec(&ctx, &call, &replacer, input, entry, limits, watchdog);
            // Jobs a codec queued (promises) run now, under the same deadline, so none are
            // left to run later outside of any call.
            for _ in 0..MAX_PENDING_JOBS {
                if watchdog.fired.get() || !ctx.execute_pending_job() {
                    break;
                }
            }
            watchdog.disarm();
            answer
        })
    }
}

/// Runs the prelude and the script, then wraps the entry point.
fn evaluate<'js>(
    ctx: &Ctx<'js>,
    name: &str,
    source: &str,
    limits: &Limits,
    watchdog: &Watchdog,
) -> Result<(Persistent<Function<'static>>, Persistent<Function<'static>>, EntryPoint), LoadError> {
    let engine_failure = |ctx: &Ctx<'js>, e: rquickjs::Error| {
        LoadError::Engine(describe_failure(ctx, e, limits, watchdog).to_string())
    };
    ctx.eval::<(), _>(PRELUDE).map_err(|e| engine_failure(ctx, e))?;

    let mut options = EvalOptions::default();
    // Vendor codecs are often sloppy-mode ES5 (undeclared assignments and all).
    options.strict = false;
    options.filename = Some(name.to_owned());
    if let Err(e) = ctx.eval_with_options::<(), _>(source, options) {
        let failure = describe_failure(ctx, e, limits, watchdog);
        return Err(match failure {
            DecodeError::Threw(message) if message.starts_with("SyntaxError") => {
                LoadError::Syntax { name: name.to_owned(), message }
            }
            other => LoadError::Startup { name: name.to_owned(), message: other.to_string() },
        });
    }

    for entry in EntryPoint::ALL {
        // Looked up by evaluating the name, not on globalThis: a top-level `const`
        // or `let` (common in modern codecs) is global but not a property of globalThis.
        let function_name = entry.function_name();
        let probe = format!("typeof {function_name} === 'function' ? {function_name} : undefined");
        let found: Option<Function> = ctx.eval(probe).map_err(|e| engine_failure(ctx, e))?;
        if let Some(decode) = found {
            let wrap: Function = ctx.eval(entry.adapter()).map_err(|e| engine_failure(ctx, e))?;
            let call: Function = wrap.call((decode,)).map_err(|e| engine_failure(ctx, e))?;
            let replacer: Function = ctx.eval(KEEP_UNDEFINED_AS_NULL).map_err(|e| engine_failure(ctx, e))?;
            return Ok((Persistent::save(ctx, call), Persistent::save(ctx, replacer), entry));
        }
    }
    Err(LoadError::NoEntryPoint { name: name.to_owned() })
}

/// One call of the codec, from building its input to reading its answer as JSON.
fn call_codec<'js>(
    ctx: &Ctx<'js>,
    call: &Function<'js>,
    replacer: &Function<'js>,
    input: &UplinkInput<'_>,
    entry: EntryPoint,
    limits: &Limits,
    watchdog: &Watchdog,
) -> Result<Decoded, DecodeError> {
    let fail = |e| describe_failure(ctx, e, limits, watchdog);

    // Fresh arrays and objects every call: what one call mutates, the next never sees.
    let bytes = Array::new(ctx.clone()).map_err(fail)?;
    for (i, byte) in input.bytes.iter().enumerate() {
        bytes.set(i, i32::from(*byte)).map_err(fail)?;
    }
    let variables = Object::new(ctx.clone()).map_err(fail)?;
    for (key, value) in input.variables {
        variables.set(key.as_str(), value.as_str()).map_err(fail)?;
    }
    let recv_time_ms = match input.recv_time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs_f64() * 1000.0,
        Err(before) => -before.duration().as_secs_f64() * 1000.0,
    };

    let answer: Value =
        call.call((bytes, i32::from(input.f_port), recv_time_ms.floor(), variables)).map_err(fail)?;

    if entry == EntryPoint::DecodeUplink && !answer.is_object() {
        return Err(DecodeError::BadReturn(format!(
            "decodeUplink must return an object {{data, warnings, errors}}, got {}",
            js_kind(&answer)
        )));
    }
    if entry == EntryPoint::DecodeUplink {
        // `data: undefined` is no data (an error below), not `data: null`.
        if let Some(object) = answer.as_object() {
            let data: Value = object.get("data").map_err(fail)?;
            if data.is_undefined() {
                object.remove("data").map_err(fail)?;
            }
        }
    }
    let kind = js_kind(&answer);
    let json = match ctx.json_stringify_replacer(answer, replacer.clone()) {
        Ok(Some(json)) => json.to_string().map_err(|e| DecodeError::BadReturn(e.to_string()))?,
        Ok(None) => {
            return Err(DecodeError::BadReturn(format!(
                "{} returned {kind}, which has no JSON form",
                entry.function_name()
            )))
        }
        Err(e) => {
            return Err(match fail(e) {
                DecodeError::Threw(why) => {
                    DecodeError::BadReturn(format!("cannot be turned into JSON: {why}"))
                }
                other => other,
            })
        }
    };
    if json.len() > limits.max_output_bytes {
        return Err(DecodeError::OutputTooLarge { limit: limits.max_output_bytes });
    }
    let value = serde_json::from_str(&json)
        .map_err(|e| DecodeError::BadReturn(format!("JSON from the engine did not parse: {e}")))?;
    match entry {
        EntryPoint::DecodeUplink => reply::from_decode_uplink(value),
        EntryPoint::ChirpStackV3 | EntryPoint::TtnV2 => Ok(reply::data_only(value)),
    }
}

/// Turns an engine error into the reason a technician should read, clearing the exception.
fn describe_failure(
    ctx: &Ctx<'_>,
    error: rquickjs::Error,
    limits: &Limits,
    watchdog: &Watchdog,
) -> DecodeError {
    let described = describe_thrown(ctx, error, limits);
    // Reading a thrown value may run codec code (getters, toString) that throws again.
    if ctx.has_exception() {
        let _ = ctx.catch();
    }
    // Checked last: the deadline may also have passed while reading the thrown value.
    if watchdog.fired.get() {
        return DecodeError::Timeout { limit: limits.time };
    }
    described
}

fn describe_thrown(ctx: &Ctx<'_>, error: rquickjs::Error, limits: &Limits) -> DecodeError {
    let out_of_memory = DecodeError::OutOfMemory { limit: limits.memory_bytes };
    if !error.is_exception() {
        return match error {
            rquickjs::Error::Allocation => out_of_memory,
            other => DecodeError::Engine(other.to_string()),
        };
    }
    let thrown = ctx.catch();
    if let Some(exception) = thrown.as_exception() {
        let message = exception.message().unwrap_or_default();
        let kind: Option<Coerced<String>> = exception.get("name").ok();
        let kind = kind.map(|k| k.0).unwrap_or_else(|| "Error".to_owned());
        if kind == "InternalError" && message == "out of memory" {
            return out_of_memory;
        }
        let mut text = format!("{kind}: {message}");
        if let Some(place) = exception.stack().as_deref().and_then(first_frame) {
            text.push_str(" (");
            text.push_str(place);
            text.push(')');
        }
        return DecodeError::Threw(reply::shorten(text, MAX_THROWN_BYTES));
    }
    let kind = js_kind(&thrown);
    let text = match Coerced::<String>::from_js(ctx, thrown) {
        Ok(text) => text.0,
        Err(_) => format!("{kind} that could not be turned into text"),
    };
    DecodeError::Threw(reply::shorten(text, MAX_THROWN_BYTES))
}

/// The innermost `at function (file:line:col)` line of a QuickJS stack.
fn first_frame(stack: &str) -> Option<&str> {
    stack.lines().map(str::trim).find(|line| line.starts_with("at "))
}

fn js_kind(value: &Value<'_>) -> &'static str {
    match value.type_of() {
        Type::Uninitialized | Type::Undefined => "undefined",
        Type::Null => "null",
        Type::Bool => "a boolean",
        Type::Int | Type::Float => "a number",
        Type::String => "a string",
        Type::Symbol => "a symbol",
        Type::BigInt => "a BigInt",
        Type::Array => "an array",
        Type::Constructor | Type::Function => "a function",
        Type::Promise => "a promise",
        Type::Exception | Type::Proxy | Type::Object => "an object",
        Type::Module | Type::Unknown => "a value of an unexpected type",
    }
}
