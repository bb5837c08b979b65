;; The sandbox measurement's baseline guest (scripts/bench/sandbox.py): logs a line, makes one
;; http_call, and returns
;; {"ok": {"input": <its input>, "response": <the host's response>}}.
(module
  (import "sequent" "log" (func $log (param i32 i32 i32)))
  (import "sequent" "http_call" (func $http_call (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 16) "echo: calling http_call")
  (data (i32.const 47) "{\22method\22:\22POST\22,\22url\22:\22http://sessions.test/sessions\22,\22headers\22:{\22content-type\22:\22application/json\22},\22body\22:\22{\5c\22job\5c\22:\5c\22echo\5c\22}\22}")
  (data (i32.const 184) "{\22ok\22:{\22input\22:")
  (data (i32.const 207) ",\22response\22:")
  (data (i32.const 227) "}}")
  ;; bump allocator: grows memory when needed, answers -1 when memory.grow is refused
  (global $heap (mut i32) (i32.const 4096))
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.add (i32.shr_u (i32.sub (local.get $end) (local.get $have)) (i32.const 16))
                         (i32.const 1)))
              (i32.const -1))
          (then (return (i32.const -1))))))
    (global.set $heap (local.get $end))
    (local.get $p))
  ;; (ptr << 32) | len
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
  ;; append [src, src+len) at the output cursor
  (global $cur (mut i32) (i32.const 0))
  (func $put (param $src i32) (param $len i32)
    (memory.copy (global.get $cur) (local.get $src) (local.get $len))
    (global.set $cur (i32.add (global.get $cur) (local.get $len))))
  (func (export "run") (param $in i32) (param $len i32) (result i64)
    (local $resp i64) (local $rlen i32) (local $out i32)
    (call $log (i32.const 1) (i32.const 16) (i32.const 23))
    (local.set $resp (call $http_call (i32.const 47) (i32.const 129)))
    (local.set $rlen (i32.wrap_i64 (local.get $resp)))
    (local.set $out
      (call $alloc (i32.add (i32.add (local.get $len) (local.get $rlen)) (i32.const 64))))
    (global.set $cur (local.get $out))
    (call $put (i32.const 184) (i32.const 15))
    (call $put (local.get $in) (local.get $len))
    (call $put (i32.const 207) (i32.const 12))
    (call $put (i32.wrap_i64 (i64.shr_u (local.get $resp) (i64.const 32))) (local.get $rlen))
    (call $put (i32.const 227) (i32.const 2))
    (call $pack (local.get $out) (i32.sub (global.get $cur) (local.get $out)))))
