;; answers ok only if an initialised byte, a zeroed byte and a page it grows are as a fresh
;; instance has them, then dirties all three: run twice in one process, the second run fails
;; if its pool slot kept the first run's pages without resetting them.
(module
  (memory (export "memory") 1)
  (data (i32.const 1024) "{\"ok\":{}}")
  (data (i32.const 1040) "{\"error\":{\"kind\":\"stale\",\"message\":\"memory left over from an earlier run\"}}")
  (data (i32.const 2048) "\01")
  (func (export "alloc") (param $n i32) (result i32) (i32.const 4096))
  (func (export "run") (param $in i32) (param $len i32) (result i64)
    (local $fresh i32)
    (local.set $fresh
      (i32.and (i32.eq (i32.load8_u (i32.const 2048)) (i32.const 1))
               (i32.eqz (i32.load8_u (i32.const 3000)))))
    (drop (memory.grow (i32.const 1)))
    (local.set $fresh (i32.and (local.get $fresh) (i32.eqz (i32.load8_u (i32.const 65536)))))
    (i32.store8 (i32.const 2048) (i32.const 2))
    (i32.store8 (i32.const 3000) (i32.const 1))
    (i32.store8 (i32.const 65536) (i32.const 1))
    ;; packed (ptr << 32) | len of the ok answer, or of the error
    (if (result i64) (local.get $fresh)
      (then (i64.const 4398046511113))
      (else (i64.const 4466765987915)))))
