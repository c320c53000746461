/* SPDX-License-Identifier: MIT */
/*
 * The worker pool of threading mode (ThreadingMixIn without its traps).
 *
 * Threads are the pool's own, not libuv's uv_queue_work threads, which are
 * four, shared with file I/O and DNS, and would be starved by handlers that
 * block for hours. The pool is elastic: a request that finds no idle worker
 * starts a thread, up to max_threads (0: no cap); beyond it requests wait in
 * FIFO order; a worker idle for thread_idle_ms exits. Bookkeeping is
 * bounded by live threads, never by requests served (CPython bpo-37193): a
 * live thread has one record on `threads`; an exited one moves to `exited`
 * until the next submit or the close joins it.
 *
 * Jobs are intrusive list nodes (the connection's `job` node), so queueing
 * allocates nothing. The pool runs `run(job)` on a worker and knows nothing
 * else about requests; results travel back through the loop's mailbox.
 *
 * Closing either joins every thread (wait), or detaches them and lets the
 * last one free the pool (socketserver's daemon_threads / block_on_close
 * false). Submit, cancel and close run on the loop thread; the rest on
 * workers.
 */
#include "internal.h"

#include <pthread.h>

static void worker_main(void* arg);


int uvs__pool_new(uvs__pool_t** out,
                  unsigned max_threads,
                  uint64_t idle_ms,
                  size_t stack_size,
                  void (*run)(uvs__list_t* job)) {
  uvs__pool_t* pool;

  pool = uvs__calloc(1, sizeof(*pool));
  if (pool == NULL)
    return UV_ENOMEM;
  if (uv_mutex_init(&pool->lock) != 0)
    goto fail_free;
  if (uv_cond_init(&pool->work) != 0)
    goto fail_lock;
  if (uv_cond_init(&pool->gone) != 0)
    goto fail_work;
  uvs__list_init(&pool->jobs);
  uvs__list_init(&pool->threads);
  uvs__list_init(&pool->exited);
  pool->max_threads = max_threads;
  pool->idle_ms = idle_ms;
  pool->stack_size = stack_size;
  pool->run = run;
  *out = pool;
  return 0;

fail_work:
  uv_cond_destroy(&pool->work);
fail_lock:
  uv_mutex_destroy(&pool->lock);
fail_free:
  uvs__free(pool);
  return UV_ENOMEM;
}


static void destroy(uvs__pool_t* pool) {
  uv_cond_destroy(&pool->gone);
  uv_cond_destroy(&pool->work);
  uv_mutex_destroy(&pool->lock);
  uvs__free(pool);
}


/* Joins and frees the records of workers that have exited. Called without
 * the lock: each has left the lock for good before it is on `exited`. */
static void join_all(uvs__list_t* exited) {
  while (!uvs__list_empty(exited)) {
    uvs__worker_t* w = container_of(exited->next, uvs__worker_t, node);
    uvs__list_remove(&w->node);
    uv_thread_join(&w->tid);
    uvs__free(w);
  }
}


static void take_exited(uvs__pool_t* pool, uvs__list_t* out) {
  uvs__list_init(out);
  while (!uvs__list_empty(&pool->exited)) {
    uvs__list_t* node = pool->exited.next;
    uvs__list_remove(node);
    uvs__list_push(out, node);
  }
}


/* Starts one worker; called with the lock held. */
static int spawn(uvs__pool_t* pool) {
  uv_thread_options_t options;
  uvs__worker_t* w;
  int r;

  w = uvs__malloc(sizeof(*w));
  if (w == NULL)
    return UV_ENOMEM;
  w->pool = pool;
  options.flags = 0;
  if (pool->stack_size > 0) {
    options.flags = UV_THREAD_HAS_STACK_SIZE;
    options.stack_size = pool->stack_size;
  }
  r = uv_thread_create_ex(&w->tid, &options, worker_main, w);
  if (r != 0) {
    uvs__free(w);
    return r;
  }
  uvs__list_push(&pool->threads, &w->node);
  pool->nthreads++;
  return 0;
}


int uvs__pool_submit(uvs__pool_t* pool, uvs__list_t* job) {
  uvs__list_t exited;
  int r = 0;

  uv_mutex_lock(&pool->lock);
  take_exited(pool, &exited);
  uvs__list_push(&pool->jobs, job);
  pool->njobs++;
  if (pool->njobs > pool->nidle &&
      (pool->max_threads == 0 || pool->nthreads < pool->max_threads)) {
    r = spawn(pool);
    /* Without a new thread the job waits for a busy one, if any. */
    if (r != 0 && pool->nthreads > 0)
      r = 0;
    if (r != 0) {
      uvs__list_remove(job);
      pool->njobs--;
    }
  }
  if (r == 0 && pool->nidle > 0)
    uv_cond_signal(&pool->work);
  uv_mutex_unlock(&pool->lock);
  join_all(&exited);
  return r;
}


void uvs__pool_cancel_queued(uvs__pool_t* pool, void (*cb)(uvs__list_t* job)) {
  uvs__list_t jobs;

  uvs__list_init(&jobs);
  uv_mutex_lock(&pool->lock);
  while (!uvs__list_empty(&pool->jobs)) {
    uvs__list_t* node = pool->jobs.next;
    uvs__list_remove(node);
    uvs__list_push(&jobs, node);
  }
  pool->njobs = 0;
  uv_mutex_unlock(&pool->lock);
  while (!uvs__list_empty(&jobs)) {
    uvs__list_t* node = jobs.next;
    uvs__list_remove(node);
    cb(node);
  }
}


void uvs__pool_close(uvs__pool_t* pool,
                     bool wait,
                     void (*on_last)(void* arg),
                     void* arg) {
  uvs__list_t exited;
  uvs__list_t* node;
  bool last;

  uv_mutex_lock(&pool->lock);
  pool->stopping = true;
  uv_cond_broadcast(&pool->work);
  if (wait) {
    while (pool->nthreads > 0)
      uv_cond_wait(&pool->gone, &pool->lock);
  } else {
    /* The workers still running free themselves and, the last of them,
     * the pool. */
    pool->detached = true;
    pool->on_last = on_last;
    pool->on_last_arg = arg;
    for (node = pool->threads.next; node != &pool->threads; node = node->next)
      pthread_detach(container_of(node, uvs__worker_t, node)->tid);
  }
  take_exited(pool, &exited);
  last = pool->nthreads == 0;
  uv_mutex_unlock(&pool->lock);
  join_all(&exited);
  if (last) {
    destroy(pool);
    if (!wait && on_last != NULL)
      on_last(arg);
  }
}


size_t uvs__pool_thread_records(uvs__pool_t* pool) {
  size_t n = 0;
  uvs__list_t* node;
  uv_mutex_lock(&pool->lock);
  for (node = pool->threads.next; node != &pool->threads; node = node->next)
    n++;
  for (node = pool->exited.next; node != &pool->exited; node = node->next)
    n++;
  uv_mutex_unlock(&pool->lock);
  return n;
}


static void worker_main(void* arg) {
  uvs__worker_t* w = arg;
  uvs__pool_t* pool = w->pool;
  bool last;

  uv_mutex_lock(&pool->lock);
  for (;;) {
    uvs__list_t* job;
    while (uvs__list_empty(&pool->jobs) && !pool->stopping) {
      int r;
      pool->nidle++;
      /* An idle time beyond 2^40 ms (about 35 years) is forever: in
       * nanoseconds it would overflow the clock arithmetic. */
      if (pool->idle_ms > ((uint64_t) 1 << 40)) {
        uv_cond_wait(&pool->work, &pool->lock);
        r = 0;
      } else {
        r = uv_cond_timedwait(&pool->work,
                              &pool->lock,
                              pool->idle_ms * (uint64_t) 1000000);
      }
      pool->nidle--;
      if (r == UV_ETIMEDOUT && uvs__list_empty(&pool->jobs))
        goto leave;
    }
    if (uvs__list_empty(&pool->jobs))
      goto leave; /* stopping */
    job = pool->jobs.next;
    uvs__list_remove(job);
    pool->njobs--;
    uv_mutex_unlock(&pool->lock);
    pool->run(job);
    uv_mutex_lock(&pool->lock);
  }

leave:
  uvs__list_remove(&w->node);
  pool->nthreads--;
  if (pool->detached) {
    void (*on_last)(void*) = pool->on_last;
    void* on_last_arg = pool->on_last_arg;
    last = pool->nthreads == 0;
    uv_mutex_unlock(&pool->lock);
    uvs__free(w);
    if (last) {
      destroy(pool);
      if (on_last != NULL)
        on_last(on_last_arg);
    }
    return;
  }
  uvs__list_push(&pool->exited, &w->node);
  uv_cond_broadcast(&pool->gone);
  uv_mutex_unlock(&pool->lock);
}
