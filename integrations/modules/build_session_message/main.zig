//! build_session_message: a sequent guest module (Guest ABI v1, DESIGN.md §3).
//!
//! Input:  {"invocation_id", "job": {"id", "attempt", "spec": {"session_service", "target", ...},
//!          "settings"}}
//! Effect: one `sequent.http_call` POST {spec.session_service}/sessions whose body is the session
//!         message {"job_id", "attempt", "invocation_id", "target", "settings"} as a JSON string.
//! Output: {"ok": {"session_id"}} or {"error": {"kind", "message", "decision_id"?}}.
//!
//! Exactly one `sequent.log` line at info level per run. Memory is never freed: every invocation
//! runs in a fresh store, so the linear memory is discarded with it.
//!
//! Built by integrations/modules/build.py (wasm32-freestanding, ReleaseSmall, stripped).

const std = @import("std");
const json = std.json;
const Allocator = std.mem.Allocator;

extern "sequent" fn log(level: i32, ptr: [*]const u8, len: usize) void;
extern "sequent" fn http_call(ptr: [*]const u8, len: usize) i64;

const LOG_INFO: i32 = 1;

// A run's allocations come first from a buffer inside the initial memory, so a typical run never
// grows memory: the host then keeps its few pages resident from one run to the next instead of
// faulting them in again (see POOL_SIZES in integrations/runtime.py). Whatever does not fit
// comes from the wasm allocator, which grows memory (and fails, alloc answering -1, at the limit).
var heap_buffer: [64 * 1024]u8 = undefined;
var buffer_first = std.heap.BufferFirstAllocator.init(&heap_buffer, std.heap.wasm_allocator);
const gpa: Allocator = buffer_first.allocator();

/// Host asks for `size` bytes to write into. -1 means out of memory (the sandbox reports it as
/// `memory_limit`).
export fn alloc(size: i32) i32 {
    const n: usize = if (size <= 0) 1 else @intCast(size);
    const buf = gpa.alloc(u8, n) catch return -1;
    return @intCast(@intFromPtr(buf.ptr));
}

/// Input JSON in, packed output JSON out: (ptr << 32) | len. 0 only if even the error is unwritable.
export fn run(ptr: i32, len: i32) i64 {
    if (ptr <= 0 or len < 0) return finish(errorJson("bad_input", "input pointer/length out of range", null));
    const p: [*]const u8 = @ptrFromInt(@as(usize, @intCast(ptr)));
    const input = p[0..@as(usize, @intCast(len))];
    const out = buildSession(input) catch errorJson("memory_limit", "guest out of memory", null);
    return finish(out);
}

fn finish(out: ?[]const u8) i64 {
    const s = out orelse return 0;
    const hi: u64 = @as(u64, @intFromPtr(s.ptr)) << 32;
    return @bitCast(hi | @as(u64, s.len));
}

const Failure = struct { kind: []const u8, message: []const u8, decision_id: ?[]const u8 = null };

fn errorJson(kind: []const u8, message: []const u8, decision_id: ?[]const u8) ?[]const u8 {
    return stringifyAlloc(.{ .@"error" = Failure{ .kind = kind, .message = message, .decision_id = decision_id } }) catch null;
}

fn stringifyAlloc(v: anytype) error{OutOfMemory}![]u8 {
    return json.Stringify.valueAlloc(gpa, v, .{ .emit_null_optional_fields = false });
}

fn logLine(comptime fmt: []const u8, args: anytype) void {
    const line = std.fmt.allocPrint(gpa, fmt, args) catch return;
    log(LOG_INFO, line.ptr, line.len);
}

fn field(v: json.Value, name: []const u8) ?json.Value {
    return switch (v) {
        .object => |o| o.get(name),
        else => null,
    };
}

fn stringField(v: json.Value, name: []const u8) ?[]const u8 {
    return switch (field(v, name) orelse return null) {
        .string => |s| s,
        else => null,
    };
}

fn badInput(comptime message: []const u8) error{OutOfMemory}![]const u8 {
    logLine("build_session_message: bad input: {s}", .{message});
    return errorJson("bad_input", message, null) orelse error.OutOfMemory;
}

fn buildSession(input: []const u8) error{OutOfMemory}![]const u8 {
    // parse_numbers = false keeps every number exactly as written, so spec/settings pass through.
    const root = json.parseFromSliceLeaky(json.Value, gpa, input, .{
        .parse_numbers = false,
        .duplicate_field_behavior = .use_last,
    }) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        else => return badInput("input is not valid JSON"),
    };
    if (root != .object) return badInput("input must be a JSON object");
    const invocation_id = field(root, "invocation_id") orelse return badInput("missing invocation_id");
    const job = field(root, "job") orelse return badInput("missing job");
    if (job != .object) return badInput("job must be an object");
    const job_id = field(job, "id") orelse return badInput("missing job.id");
    const attempt = field(job, "attempt") orelse return badInput("missing job.attempt");
    const spec = field(job, "spec") orelse return badInput("missing job.spec");
    if (spec != .object) return badInput("job.spec must be an object");
    const service = stringField(spec, "session_service") orelse
        return badInput("job.spec.session_service (base URL of the session service) is missing");
    if (service.len == 0) return badInput("job.spec.session_service is empty");
    const target: json.Value = field(spec, "target") orelse .null;
    const settings: json.Value = field(job, "settings") orelse .{ .object = .empty };

    // The session message, sent as the request body (a JSON string inside the request JSON).
    const message = try stringifyAlloc(.{
        .job_id = job_id,
        .attempt = attempt,
        .invocation_id = invocation_id,
        .target = target,
        .settings = settings,
    });
    const base = std.mem.trimEnd(u8, service, "/");
    const url = try std.mem.concat(gpa, u8, &.{ base, "/sessions" });
    const request = try stringifyAlloc(.{
        .method = "POST",
        .url = url,
        .headers = .{ .@"content-type" = "application/json" },
        .body = message,
    });

    const packed_response: u64 = @bitCast(http_call(request.ptr, request.len));
    const rptr: usize = @intCast(packed_response >> 32);
    const rlen: usize = @intCast(packed_response & 0xffff_ffff);
    if (rptr == 0) {
        logLine("build_session_message: POST {s} -> no response from host", .{url});
        return errorJson("http_error", "http_call returned no response", null) orelse error.OutOfMemory;
    }
    const response_bytes = @as([*]const u8, @ptrFromInt(rptr))[0..rlen];
    return handleResponse(url, response_bytes);
}

fn handleResponse(url: []const u8, bytes: []const u8) error{OutOfMemory}![]const u8 {
    const response = json.parseFromSliceLeaky(json.Value, gpa, bytes, .{
        .duplicate_field_behavior = .use_last,
    }) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        else => return httpError(url, "http_call response is not valid JSON"),
    };
    if (field(response, "error")) |e| {
        const kind = stringField(e, "kind") orelse "http_error";
        const message = stringField(e, "message") orelse "";
        const decision_id = stringField(e, "decision_id");
        logLine("build_session_message: POST {s} -> {s}: {s}", .{ url, kind, message });
        return errorJson(kind, message, decision_id) orelse error.OutOfMemory;
    }
    const status: i64 = switch (field(response, "status") orelse .null) {
        .integer => |i| i,
        else => return httpError(url, "http_call response has no integer status"),
    };
    if (status != 200 and status != 201) {
        const message = try std.fmt.allocPrint(gpa, "status {d}", .{status});
        return httpError(url, message);
    }
    const body = stringField(response, "body") orelse return httpError(url, "response has no body");
    const session = json.parseFromSliceLeaky(json.Value, gpa, body, .{
        .duplicate_field_behavior = .use_last,
    }) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        else => return httpError(url, "response body is not valid JSON"),
    };
    const session_id = stringField(session, "session_id") orelse
        return httpError(url, "response body has no session_id");
    logLine("build_session_message: POST {s} -> {d} session {s}", .{ url, status, session_id });
    return stringifyAlloc(.{ .ok = .{ .session_id = session_id } });
}

fn httpError(url: []const u8, message: []const u8) error{OutOfMemory}![]const u8 {
    logLine("build_session_message: POST {s} -> http_error: {s}", .{ url, message });
    return errorJson("http_error", message, null) orelse error.OutOfMemory;
}
