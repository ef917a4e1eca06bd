/* Machine noise during a measurement (noise.h). */
#include "noise.h"

#include "moe/clock.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static FILE *proc_open(const char *name) {
  const char *root = getenv("MOE_PROC_ROOT");
  char path[512];
  snprintf(path, sizeof path, "%s/%s", root && root[0] ? root : "/proc", name);
  return fopen(path, "r");
}

noise_sample noise_now(void) {
  noise_sample s = {0};
  FILE *f = proc_open("stat");
  if (f == NULL) return s;
  unsigned long long v[10] = {0};
  const int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                       &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
  fclose(f);
  if (n < 8) return s;
  /* user nice system idle iowait irq softirq steal (guest time is within user) */
  for (int i = 0; i < 8; i++) s.total += v[i];
  s.idle = v[3] + v[4];
  s.steal = v[7];
  f = proc_open("self/stat");
  if (f == NULL) return s;
  char buf[2048];
  const size_t got = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[got] = '\0';
  /* after the command name's closing parenthesis: fields 3.. ; utime and
   * stime are fields 14 and 15 */
  const char *p = strrchr(buf, ')');
  if (p == NULL) return s;
  unsigned long long ut = 0, st = 0;
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) return s;
  s.self = ut + st;
  s.ok = true;
  return s;
}

noise_figures noise_between(const noise_sample *a, const noise_sample *b) {
  noise_figures r = {0};
  if (!a->ok || !b->ok || b->total <= a->total) return r;
  const double total = (double)(b->total - a->total);
  const double idle = (double)(b->idle - a->idle), steal = (double)(b->steal - a->steal);
  const double self = b->self >= a->self ? (double)(b->self - a->self) : 0.0;
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  double other = (total - idle - steal - self) / total * (double)(cpus > 0 ? cpus : 1);
  r.other_cores = other > 0 ? other : 0.0;
  r.steal_share = steal > 0 ? steal / total : 0.0;
  r.noisy = r.other_cores > NOISE_OTHER_CORES_MAX || r.steal_share > NOISE_STEAL_MAX;
  r.ok = true;
  return r;
}

double noise_compute_probe(void) {
  enum { N = 1 << 21 };
  volatile double sink;
  double a = 1.0, b = 0.5;
  const double t0 = moe_clock_s();
  for (int i = 0; i < N; i++) { /* dependent multiply-adds: the core's latency-bound rate */
    a = a * 0.999999 + b;
    b = b * 0.999998 + 1e-9;
  }
  sink = a + b;
  (void)sink;
  const double dt = moe_clock_s() - t0;
  return dt > 0 ? 2.0 * N / dt : NAN;
}

bool noise_rates_noisy(double probe_ratio, double achieved_gbps, double cap_gbps, double avg_copy) {
  const bool slow_compute = isfinite(probe_ratio) && probe_ratio < NOISE_COMPUTE_MIN;
  const bool slow_link = achieved_gbps > 0 && cap_gbps > 0 && avg_copy >= (double)NOISE_LINK_COPY_MIN &&
                         achieved_gbps < NOISE_LINK_MIN * cap_gbps;
  return slow_compute || slow_link;
}
