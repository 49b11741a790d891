/* A CGI-style wcluster handler in C: the request arrives in environment
 * variables and on stdin, the response goes to stdout as CGI headers, a
 * blank line and the body.
 *
 *   clang --target=wasm32-wasi --sysroot=/usr -O2 -o handler.wasm handler.c
 *   wcluster serve handler.wasm
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

int main(void) {
    const char *method = env("REQUEST_METHOD");
    const char *path = env("PATH_INFO");

    if (strcmp(path, "/missing") == 0) {
        printf("Status: 404 Not Found\nContent-Type: text/plain\n\nno such page\n");
        return 0;
    }

    printf("Content-Type: text/plain\n\n");
    printf("Hello from C! %s %s", method, path);
    if (*env("QUERY_STRING")) printf("?%s", env("QUERY_STRING"));
    printf("\n");

    if (strcmp(method, "POST") == 0) {
        /* Echo the body back, counting it. */
        char buf[4096];
        size_t n, total = 0;
        printf("body: ");
        while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
            fwrite(buf, 1, n, stdout);
            total += n;
        }
        printf("\n%zu bytes\n", total);
    }
    return 0;
}
