;; traps with `unreachable` far from any memory limit.
(module
  (memory (export "memory") 1)
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
  (func (export "run") (param $in i32) (param $len i32) (result i64)
    unreachable))
