// A buildpack written in C: apps that start with a shell script.
//
// detect:  the app has a `start.sh` at its root.
// compile: marks `start.sh` executable (through the host: WASI cannot set modes), then fetches
//          every file the app's optional `fetch.txt` lists, one per line as
//          `URL SHA256 PATH` (PATH relative to the app; `#` starts a comment), through the
//          host's `fetch`, which applies the platform's mirrors, allowlist and cache.
// release: `web: ./start.sh`.
//
// Built by build.sh: wit-bindgen C bindings, clang for wasm32-wasi, `dea buildpack componentize`.

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "buildpack.h"

#define START "/app/start.sh"
#define FETCH_LIST "/app/fetch.txt"

static void say(dea_buildpack_host_log_kind_t kind, const char *text) {
  buildpack_string_t message;
  buildpack_string_set(&message, text);
  dea_buildpack_host_log(kind, &message);
}

// Sets `err` to a failure of kind `tag` with a formatted message; returns false so callers
// can `return fail(...)`.
static bool fail(buildpack_error_t *err, uint8_t tag, const char *what, const char *detail) {
  char text[512];
  snprintf(text, sizeof text, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
  err->tag = tag;
  // Returned strings are freed by the post-return function, so they must be heap copies.
  buildpack_string_dup(&err->val.failed, text);
  return false;
}

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

bool exports_buildpack_detect(buildpack_option_detection_t *ret, buildpack_error_t *err) {
  (void)err;
  ret->is_some = exists(START);
  if (ret->is_some) {
    buildpack_string_dup(&ret->val.name, "shell");
    ret->val.version.is_some = false;
  }
  return true;
}

// Copies a host string (not NUL-terminated) into `buf`.
static const char *c_string(const buildpack_string_t *s, char *buf, size_t size) {
  size_t n = s->len < size - 1 ? s->len : size - 1;
  memcpy(buf, s->ptr, n);
  buf[n] = '\0';
  return buf;
}

// The message a fetch error carries (every case holds one string).
static const buildpack_string_t *fetch_error_text(const dea_buildpack_host_fetch_error_t *e) {
  return &e->val.denied;
}

static const char *fetch_error_kind(uint8_t tag) {
  switch (tag) {
  case DEA_BUILDPACK_HOST_FETCH_ERROR_DENIED: return "denied";
  case DEA_BUILDPACK_HOST_FETCH_ERROR_CHECKSUM_MISMATCH: return "checksum mismatch";
  case DEA_BUILDPACK_HOST_FETCH_ERROR_NOT_FOUND: return "not found";
  case DEA_BUILDPACK_HOST_FETCH_ERROR_NETWORK: return "network";
  case DEA_BUILDPACK_HOST_FETCH_ERROR_TOO_LARGE: return "too large";
  default: return "invalid destination";
  }
}

// Fetches one `URL SHA256 PATH` line; false with `err` set on failure.
static bool fetch_line(char *line, int number, buildpack_error_t *err) {
  char *url = strtok(line, " \t\r\n");
  if (url == NULL || url[0] == '#') {
    return true;
  }
  char *sha256 = strtok(NULL, " \t\r\n");
  char *path = strtok(NULL, " \t\r\n");
  char where[64];
  snprintf(where, sizeof where, "fetch.txt line %d", number);
  if (sha256 == NULL || path == NULL) {
    return fail(err, DEA_BUILDPACK_TYPES_ERROR_FAILED, where, "expected `URL SHA256 PATH`");
  }
  if (path[0] == '/' || strstr(path, "..") != NULL) {
    return fail(err, DEA_BUILDPACK_TYPES_ERROR_FAILED, where, "PATH must stay inside the app");
  }
  char destination[1024];
  snprintf(destination, sizeof destination, "/app/%s", path);

  dea_buildpack_host_fetch_request_t request;
  buildpack_string_set(&request.url, url);
  request.sha256.is_some = true;
  buildpack_string_set(&request.sha256.val, sha256);
  buildpack_string_set(&request.destination, destination);
  request.unpack.is_some = false;

  dea_buildpack_host_fetch_result_t result;
  dea_buildpack_host_fetch_error_t fetch_err;
  if (!dea_buildpack_host_fetch(&request, &result, &fetch_err)) {
    char text[768];
    char detail[600];
    snprintf(text, sizeof text, "%s (%s)", c_string(fetch_error_text(&fetch_err), detail, sizeof detail),
             fetch_error_kind(fetch_err.tag));
    dea_buildpack_host_fetch_error_free(&fetch_err);
    return fail(err, DEA_BUILDPACK_TYPES_ERROR_FAILED, where, text);
  }
  char used[600];
  char text[1024];
  /* Not whether the host's cache answered: the log ships in the droplet, which must be the
     same either way. */
  snprintf(text, sizeof text, "%s: %llu bytes from %s", path, (unsigned long long)result.size,
           c_string(&result.url_used, used, sizeof used));
  say(DEA_BUILDPACK_HOST_LOG_KIND_DETAIL, text);
  dea_buildpack_host_fetch_result_free(&result);
  return true;
}

bool exports_buildpack_compile(buildpack_error_t *err) {
  say(DEA_BUILDPACK_HOST_LOG_KIND_STEP, "Preparing shell app");
  buildpack_string_t path;
  buildpack_string_set(&path, START);
  buildpack_string_t denied;
  if (!dea_buildpack_host_make_executable(&path, &denied)) {
    char text[512];
    c_string(&denied, text, sizeof text);
    buildpack_string_free(&denied);
    return fail(err, DEA_BUILDPACK_TYPES_ERROR_DENIED, "making start.sh executable", text);
  }
  FILE *list = fopen(FETCH_LIST, "r");
  if (list == NULL) {
    if (errno == ENOENT) {
      return true;
    }
    return fail(err, DEA_BUILDPACK_TYPES_ERROR_IO, "reading fetch.txt", strerror(errno));
  }
  say(DEA_BUILDPACK_HOST_LOG_KIND_STEP, "Fetching the files fetch.txt lists");
  char line[2048];
  int number = 0;
  bool ok = true;
  while (ok && fgets(line, sizeof line, list) != NULL) {
    ok = fetch_line(line, ++number, err);
  }
  fclose(list);
  return ok;
}

bool exports_buildpack_release(buildpack_release_info_t *ret, buildpack_error_t *err) {
  (void)err;
  buildpack_tuple2_string_string_t *web = malloc(sizeof *web);
  if (web == NULL) {
    return fail(err, DEA_BUILDPACK_TYPES_ERROR_IO, "out of memory", NULL);
  }
  buildpack_string_dup(&web->f0, "web");
  buildpack_string_dup(&web->f1, "./start.sh");
  ret->process_types.ptr = web;
  ret->process_types.len = 1;
  ret->config_vars.ptr = NULL;
  ret->config_vars.len = 0;
  ret->addons.ptr = NULL;
  ret->addons.len = 0;
  return true;
}
