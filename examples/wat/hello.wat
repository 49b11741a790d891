;; A CGI-style handler in WebAssembly text: no toolchain needed. It is
;; wcluster's built-in default (`wcluster serve` with no file), and shows
;; the CGI convention at its smallest: headers, a blank line, the body, all
;; written to stdout (fd 1) with WASI's fd_write.
;;
;; Serve it as it is: wcluster serve examples/wat/hello.wat
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\n\nHello from wcluster!\nThis is the built-in handler; serve your own with: wcluster serve handler.wasm\n")
  (func (export "_start")
    ;; One iovec at address 0: the message at 64, 126 bytes long.
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 126))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
