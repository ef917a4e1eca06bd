/* The capture gate (engine/src/capture_gate.h): when a capture of the
 * compute stream must end, held against a model of CUDA's event semantics.
 *
 * The model: three streams (compute, copy, host) and the host; events hold
 * their last issued record, named by the call that made it.  Eager (no
 * capture), each call is issued when made: a record becomes the event's
 * last, a wait (by a stream or the host) sees the last record issued.
 * Captured, the compute stream's calls wait in the open capture until it is
 * flushed; then its records are issued, and its external waits see the
 * event's last record as of the launch.  Whether a graph's waits are
 * resolved before its own records or after them is not something the CUDA
 * documentation settles, so every sequence is checked under both.
 *
 * The property: on random sequences of the backend's calls, with the gate
 * deciding when to flush, every wait sees the record it sees eagerly, and
 * every event ends with the same last record.  Directed cases show each
 * rule on its own (each fails when its rule is removed: checked by hand). */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "capture_gate.h"
#include "testutil.h"

enum { NEV = 3, MAXCALLS = 256, NONE = -1 };

typedef struct item {
  int wait; /* 1 a wait, 0 a record */
  int ev, call;
} item;

typedef struct model {
  int graphs;        /* capture the compute stream */
  int records_first; /* a flushed graph's records land before its waits see */
  moe_capture_gate g;
  moe_capture_mark mk[NEV];
  int last[NEV]; /* the call of each event's last issued record */
  item pend[MAXCALLS];
  int npend;
  int seen[MAXCALLS]; /* what each wait call saw */
  int flushes;
} model;

static void m_init(model *m, int graphs, int records_first) {
  memset(m, 0, sizeof *m);
  m->graphs = graphs;
  m->records_first = records_first;
  for (int i = 0; i < NEV; i++) m->last[i] = NONE;
  for (int i = 0; i < MAXCALLS; i++) m->seen[i] = -2;
}

static void issue_waits(model *m) {
  for (int i = 0; i < m->npend; i++)
    if (m->pend[i].wait) m->seen[m->pend[i].call] = m->last[m->pend[i].ev];
}

static void flush(model *m) {
  if (!m->graphs || m->g.open == 0) return;
  moe_gate_end(&m->g);
  m->flushes++;
  if (!m->records_first) issue_waits(m);
  for (int i = 0; i < m->npend; i++)
    if (!m->pend[i].wait) m->last[m->pend[i].ev] = m->pend[i].call;
  if (m->records_first) issue_waits(m);
  m->npend = 0;
}

static void open_capture(model *m) {
  if (m->graphs && m->g.open == 0) moe_gate_begin(&m->g);
}

/* compute_record */
static void c_record(model *m, int ev, int call) {
  if (!m->graphs) {
    m->last[ev] = call;
    return;
  }
  if (moe_gate_flush_for_record(&m->g, &m->mk[ev], 1)) flush(m);
  open_capture(m);
  m->pend[m->npend++] = (item){0, ev, call};
  moe_gate_recorded(&m->g, &m->mk[ev], 1);
}

/* compute_wait */
static void c_wait(model *m, int ev, int call) {
  if (!m->graphs) {
    m->seen[call] = m->last[ev];
    return;
  }
  open_capture(m);
  if (moe_gate_wait(&m->g, &m->mk[ev])) {
    m->pend[m->npend++] = (item){1, ev, call};
    return;
  }
  /* dropped: the stream's order makes it see the capture's last record */
  for (int i = m->npend - 1; i >= 0; i--)
    if (!m->pend[i].wait && m->pend[i].ev == ev) {
      m->seen[call] = m->pend[i].call;
      return;
    }
  ck_abort_msg("a wait was dropped with no record of its event in the capture");
}

/* a record on the copy or host stream (a copy's event, host_run's done) */
static void foreign_record(model *m, int ev, int call) {
  if (moe_gate_flush_for_record(&m->g, &m->mk[ev], 0)) flush(m);
  moe_gate_recorded(&m->g, &m->mk[ev], 0);
  m->last[ev] = call;
}

/* copy_wait, host_run's wait, event_sync, event_done */
static void foreign_wait(model *m, int ev, int call) {
  if (moe_gate_flush_for_use(&m->g, &m->mk[ev])) flush(m);
  m->seen[call] = m->last[ev];
}

enum { OP_KERNEL, OP_C_RECORD, OP_C_WAIT, OP_F_RECORD, OP_F_WAIT, OP_DOWNLOAD, OP_N };

static void apply(model *m, int op, int ev, int call) {
  switch (op) {
  case OP_KERNEL: open_capture(m); break;
  case OP_C_RECORD: c_record(m, ev, call); break;
  case OP_C_WAIT: c_wait(m, ev, call); break;
  case OP_F_RECORD: foreign_record(m, ev, call); break;
  case OP_F_WAIT: foreign_wait(m, ev, call); break;
  default: flush(m); break; /* download, synchronize */
  }
}

/* Runs ops eagerly and captured (both resolution orders); 1 when every
 * wait and every event's last record agree. */
static int agrees(const int *ops, const int *evs, int n, char *why, size_t cap) {
  model ref, cap_m;
  m_init(&ref, 0, 0);
  for (int i = 0; i < n; i++) apply(&ref, ops[i], evs[i], i);
  for (int order = 0; order < 2; order++) {
    m_init(&cap_m, 1, order);
    for (int i = 0; i < n; i++) apply(&cap_m, ops[i], evs[i], i);
    flush(&cap_m);
    for (int i = 0; i < n; i++)
      if (cap_m.seen[i] != ref.seen[i]) {
        snprintf(why, cap, "call %d (op %d, event %d) saw record %d, eagerly %d (order %d)", i,
                 ops[i], evs[i], cap_m.seen[i], ref.seen[i], order);
        return 0;
      }
    for (int e = 0; e < NEV; e++)
      if (cap_m.last[e] != ref.last[e]) {
        snprintf(why, cap, "event %d ends at record %d, eagerly %d (order %d)", e, cap_m.last[e],
                 ref.last[e], order);
        return 0;
      }
  }
  return 1;
}

#define AGREES(ops, evs)                                                              \
  do {                                                                                \
    char why_[160] = "";                                                              \
    ck_assert_msg(agrees((ops), (evs), (int)(sizeof(ops) / sizeof *(ops)), why_, sizeof why_), \
                  "%s", why_);                                                        \
  } while (0)

/* The copy stream waits for a slot's free event the capture recorded. */
START_TEST(use_of_a_captured_record_flushes) {
  const int ops[] = {OP_F_RECORD, OP_KERNEL, OP_C_RECORD, OP_F_WAIT};
  const int evs[] = {0, 0, 0, 0};
  AGREES(ops, evs);
}
END_TEST

/* A slot's ready event, waited on in the capture, is recorded again by
 * the next copy into the slot. */
START_TEST(record_after_a_captured_wait_flushes) {
  const int ops[] = {OP_F_RECORD, OP_C_WAIT, OP_F_RECORD, OP_DOWNLOAD};
  const int evs[] = {1, 1, 1, 0};
  AGREES(ops, evs);
}
END_TEST

/* The capture waits on an event and then records it itself. */
START_TEST(own_record_after_a_captured_wait_flushes) {
  const int ops[] = {OP_F_RECORD, OP_C_WAIT, OP_C_RECORD, OP_C_WAIT, OP_F_WAIT};
  const int evs[] = {2, 2, 2, 2, 2};
  AGREES(ops, evs);
}
END_TEST

/* The capture records an event, another stream records it after: the
 * other record is the last. */
START_TEST(foreign_record_after_a_captured_record_flushes) {
  const int ops[] = {OP_C_RECORD, OP_F_RECORD, OP_DOWNLOAD, OP_F_WAIT};
  const int evs[] = {0, 0, 0, 0};
  AGREES(ops, evs);
}
END_TEST

/* A wait on the capture's own record is dropped, and sees that record. */
START_TEST(a_wait_on_the_captures_own_record_is_dropped) {
  model m;
  m_init(&m, 1, 0);
  c_record(&m, 0, 0);
  c_wait(&m, 0, 1);
  ck_assert_int_eq(m.npend, 1); /* the record only */
  ck_assert_int_eq(m.seen[1], 0);
  foreign_record(&m, 0, 2); /* flushes: the capture recorded it */
  ck_assert_int_eq(m.flushes, 1);
  c_wait(&m, 0, 3); /* now an external wait, on the copy's record */
  ck_assert_int_eq(m.npend, 1);
  flush(&m);
  ck_assert_int_eq(m.seen[3], 2);
}
END_TEST

/* Calls that need no flush do not flush: waits on copies, records of
 * other events, and a capture that keeps going across them. */
START_TEST(independent_calls_keep_the_capture_open) {
  model m;
  m_init(&m, 1, 0);
  foreign_record(&m, 0, 0);
  c_wait(&m, 0, 1);
  c_record(&m, 1, 2);
  foreign_record(&m, 2, 3);
  foreign_wait(&m, 2, 4);
  c_wait(&m, 2, 5);
  ck_assert_int_eq(m.flushes, 0);
  ck_assert_int_eq(m.npend, 3);
  ck_assert_int_eq(m.seen[4], 3);
}
END_TEST

static uint64_t next_rand(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

START_TEST(random_sequences_agree_with_eager_streams) {
  uint64_t s = 0x9e3779b97f4a7c15ull;
  int ops[60], evs[60], total_flushes = 0;
  for (int round = 0; round < 20000; round++) {
    const int n = 1 + (int)(next_rand(&s) % 60);
    for (int i = 0; i < n; i++) {
      ops[i] = (int)(next_rand(&s) % OP_N);
      evs[i] = (int)(next_rand(&s) % NEV);
    }
    char why[160] = "";
    ck_assert_msg(agrees(ops, evs, n, why, sizeof why), "round %d: %s", round, why);
    model m;
    m_init(&m, 1, 0);
    for (int i = 0; i < n; i++) apply(&m, ops[i], evs[i], i);
    total_flushes += m.flushes;
  }
  ck_assert_int_gt(total_flushes, 0);
}
END_TEST

/* Without the gate's flushes the model does tell: the same generator
 * finds a disagreement (so the property above can fail). */
START_TEST(the_model_tells_a_capture_without_flushes) {
  uint64_t s = 0x12345ull;
  int ops[30], evs[30], found = 0;
  for (int round = 0; round < 2000 && !found; round++) {
    for (int i = 0; i < 30; i++) {
      ops[i] = (int)(next_rand(&s) % OP_N);
      evs[i] = (int)(next_rand(&s) % NEV);
      if (ops[i] == OP_DOWNLOAD) ops[i] = OP_KERNEL;
    }
    model ref, cap_m;
    m_init(&ref, 0, 0);
    m_init(&cap_m, 1, 0);
    for (int i = 0; i < 30; i++) {
      apply(&ref, ops[i], evs[i], i);
      /* a gate that never asks for a flush: records and waits only */
      if (ops[i] == OP_C_RECORD) {
        open_capture(&cap_m);
        cap_m.pend[cap_m.npend++] = (item){0, evs[i], i};
      } else if (ops[i] == OP_C_WAIT) {
        open_capture(&cap_m);
        cap_m.pend[cap_m.npend++] = (item){1, evs[i], i};
      } else if (ops[i] == OP_F_RECORD) {
        cap_m.last[evs[i]] = i;
      } else if (ops[i] == OP_F_WAIT) {
        cap_m.seen[i] = cap_m.last[evs[i]];
      }
    }
    flush(&cap_m);
    for (int i = 0; i < 30; i++) found |= cap_m.seen[i] != ref.seen[i];
  }
  ck_assert(found);
}
END_TEST

int main(void) {
  Suite *s = suite_create("capture_gate");
  TCase *tc = tcase_create("model");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, use_of_a_captured_record_flushes);
  tcase_add_test(tc, record_after_a_captured_wait_flushes);
  tcase_add_test(tc, own_record_after_a_captured_wait_flushes);
  tcase_add_test(tc, foreign_record_after_a_captured_record_flushes);
  tcase_add_test(tc, a_wait_on_the_captures_own_record_is_dropped);
  tcase_add_test(tc, independent_calls_keep_the_capture_open);
  tcase_add_test(tc, random_sequences_agree_with_eager_streams);
  tcase_add_test(tc, the_model_tells_a_capture_without_flushes);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
