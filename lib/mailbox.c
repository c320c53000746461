/* SPDX-License-Identifier: MIT */
/*
 * The per-loop mailbox: the one uv_async_t through which every other thread
 * reaches a loop (DESIGN.md section 3), shared by all servers on that loop.
 *
 * A message is a uvs__msg_t embedded in the object it concerns (a server, a
 * connection), so posting never allocates and never fails. Posting a
 * message that is already queued does nothing: its run function will see
 * everything that changed, which batches a burst of wake-ups into one run.
 * The async callback takes a snapshot of the queue and runs each message
 * once; a message posted again meanwhile waits for the next wake-up, so a
 * busy worker cannot keep the loop in this callback.
 *
 * Mailboxes live in a process-wide registry keyed by loop, counted by the
 * servers that use them; the last server to leave closes the async handle.
 * `holds` counts reasons to keep the loop alive (serve_forever, requests
 * still running on workers): the async handle is referenced only then, so
 * an embedding application's loop can end when uvs has nothing to do.
 *
 * Lock order: a connection's I/O lock, then the mailbox lock, then the
 * registry lock is never held with either.
 */
#include "internal.h"

#include <stdlib.h>

static void on_async(uv_async_t* handle);
static void on_closed(uv_handle_t* handle);

static uv_once_t registry_once = UV_ONCE_INIT;
static uv_mutex_t registry_lock;
static uvs__list_t registry;


static void registry_init(void) {
  if (uv_mutex_init(&registry_lock) != 0)
    abort();
  uvs__list_init(&registry);
}


int uvs__mailbox_acquire(uv_loop_t* loop, uvs__mailbox_t** out) {
  uvs__mailbox_t* mb = NULL;
  uvs__list_t* node;
  int r;

  uv_once(&registry_once, registry_init);
  uv_mutex_lock(&registry_lock);
  for (node = registry.next; node != &registry; node = node->next) {
    uvs__mailbox_t* m = container_of(node, uvs__mailbox_t, registry_node);
    if (m->loop == loop) {
      mb = m;
      break;
    }
  }
  if (mb != NULL) {
    mb->refs++;
    uv_mutex_unlock(&registry_lock);
    *out = mb;
    return 0;
  }

  r = UV_ENOMEM;
  mb = uvs__calloc(1, sizeof(*mb));
  if (mb == NULL)
    goto fail;
  if (uv_mutex_init(&mb->lock) != 0)
    goto fail_free;
  r = uv_async_init(loop, &mb->async, on_async);
  if (r != 0)
    goto fail_lock;
  uv_unref((uv_handle_t*) &mb->async);
  mb->loop = loop;
  mb->refs = 1;
  uvs__list_init(&mb->queue);
  uvs__list_push(&registry, &mb->registry_node);
  uv_mutex_unlock(&registry_lock);
  *out = mb;
  return 0;

fail_lock:
  uv_mutex_destroy(&mb->lock);
fail_free:
  uvs__free(mb);
fail:
  uv_mutex_unlock(&registry_lock);
  return r;
}


void uvs__mailbox_release(uvs__mailbox_t* mb, uvs_server_t* server) {
  bool last;

  uv_mutex_lock(&registry_lock);
  last = --mb->refs == 0;
  if (last)
    uvs__list_remove(&mb->registry_node);
  uv_mutex_unlock(&registry_lock);
  if (!last)
    return;
  /* The server that leaves last waits for the handle's close, so an owned
   * loop is never closed with it open. */
  mb->closing_server = server;
  uvs__server_closing_handle(server);
  uv_close((uv_handle_t*) &mb->async, on_closed);
}


static void on_closed(uv_handle_t* handle) {
  uvs__mailbox_t* mb = container_of(handle, uvs__mailbox_t, async);
  uvs_server_t* server = mb->closing_server;
  uv_mutex_destroy(&mb->lock);
  uvs__free(mb);
  uvs__server_handle_closed(server);
}


void uvs__mailbox_post(uvs__mailbox_t* mb, uvs__msg_t* msg) {
  bool wake;

  uv_mutex_lock(&mb->lock);
  wake = !msg->queued;
  if (wake) {
    msg->queued = true;
    uvs__list_push(&mb->queue, &msg->node);
  }
  uv_mutex_unlock(&mb->lock);
  if (wake)
    uv_async_send(&mb->async);
}


void uvs__mailbox_cancel(uvs__mailbox_t* mb, uvs__msg_t* msg) {
  uv_mutex_lock(&mb->lock);
  if (msg->queued) {
    msg->queued = false;
    uvs__list_remove(&msg->node);
  }
  uv_mutex_unlock(&mb->lock);
}


void uvs__mailbox_hold(uvs__mailbox_t* mb) {
  if (mb->holds++ == 0)
    uv_ref((uv_handle_t*) &mb->async);
}


void uvs__mailbox_unhold(uvs__mailbox_t* mb) {
  if (--mb->holds == 0)
    uv_unref((uv_handle_t*) &mb->async);
}


static void on_async(uv_async_t* handle) {
  uvs__mailbox_t* mb = container_of(handle, uvs__mailbox_t, async);
  uvs__list_t batch;

  /* Messages stay marked queued while in `batch`, so a post meanwhile does
   * not queue them twice, and a cancel (their object is being freed by an
   * earlier message's run) unlinks them from `batch` under the lock. */
  uvs__list_init(&batch);
  uv_mutex_lock(&mb->lock);
  if (!uvs__list_empty(&mb->queue)) {
    batch.next = mb->queue.next;
    batch.prev = mb->queue.prev;
    batch.next->prev = &batch;
    batch.prev->next = &batch;
    uvs__list_init(&mb->queue);
  }
  uv_mutex_unlock(&mb->lock);

  for (;;) {
    uvs__msg_t* msg;
    uv_mutex_lock(&mb->lock);
    if (uvs__list_empty(&batch)) {
      uv_mutex_unlock(&mb->lock);
      break;
    }
    msg = container_of(batch.next, uvs__msg_t, node);
    uvs__list_remove(&msg->node);
    msg->queued = false;
    uv_mutex_unlock(&mb->lock);
    msg->run(msg);
  }
}
