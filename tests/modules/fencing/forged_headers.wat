;; A guest that tries to set the headers only the host may set. Its input is {"url": URL};
;; it POSTs to URL with Host: admin.internal:9999, Connection: close (naming X-Hop as
;; hop-by-hop too), Idempotency-Key: forged, Sequent-Attempt: 99, Transfer-Encoding,
;; Proxy-Authorization, Upgrade and a false Content-Length, beside two ordinary headers
;; (content-type, X-Guest), and returns {"ok": {"response": <the host's response>}}.
;; The request is the fixed text at 16 (everything but the url) followed by the input minus its "{".
(module
  (import "sequent" "http_call" (func $http_call (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{\22method\22:\22POST\22,\22headers\22:{\22Host\22:\22admin.internal:9999\22,\22Connection\22:\22close, X-Hop\22,\22X-Hop\22:\22named-by-connection\22,\22Idempotency-Key\22:\22forged\22,\22Sequent-Attempt\22:\2299\22,\22Transfer-Encoding\22:\22chunked\22,\22Proxy-Authorization\22:\22Basic Zm9yZ2Vk\22,\22Upgrade\22:\22h2c\22,\22Content-Length\22:\221\22,\22content-type\22:\22application/json\22,\22X-Guest\22:\22kept\22},\22body\22:\22{\5c\22forged\5c\22:true}\22,")
  (data (i32.const 384) "{\22ok\22:{\22response\22:")
  (data (i32.const 416) "}}")
  (global $heap (mut i32) (i32.const 4096))
  ;; bump allocator: grows memory when needed, answers -1 when memory.grow is refused
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
  (global $cur (mut i32) (i32.const 0))
  (func $put (param $src i32) (param $len i32)
    (memory.copy (global.get $cur) (local.get $src) (local.get $len))
    (global.set $cur (i32.add (global.get $cur) (local.get $len))))
  (func (export "run") (param $in i32) (param $len i32) (result i64)
    (local $req i32) (local $resp i64) (local $rlen i32) (local $out i32)
    (local.set $req (call $alloc (i32.add (i32.const 350) (local.get $len))))
    (global.set $cur (local.get $req))
    (call $put (i32.const 16) (i32.const 350))
    (call $put (i32.add (local.get $in) (i32.const 1)) (i32.sub (local.get $len) (i32.const 1)))
    (local.set $resp
      (call $http_call (local.get $req) (i32.sub (global.get $cur) (local.get $req))))
    (local.set $rlen (i32.wrap_i64 (local.get $resp)))
    (local.set $out (call $alloc (i32.add (local.get $rlen) (i32.const 32))))
    (global.set $cur (local.get $out))
    (call $put (i32.const 384) (i32.const 18))
    (call $put (i32.wrap_i64 (i64.shr_u (local.get $resp) (i64.const 32))) (local.get $rlen))
    (call $put (i32.const 416) (i32.const 2))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (global.get $cur) (local.get $out))))))
