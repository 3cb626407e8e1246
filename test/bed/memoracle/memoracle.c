/*
 * vsbed guest: the memory oracle (kernel command line vsbed.mem=N[:MS]),
 * started by init after the disk oracle's BOOT line. Built static by
 * test/bed/up into the initramfs as /bin/vsbed-memoracle.
 *
 * It stamps N MiB of its own memory page by page, in sweeps: sweep s writes
 * s into three words of every page (its first, middle and last), and before
 * it does, it checks that the page still holds s-1, the previous sweep's
 * stamp. A RAM image that lost one of the guest's writes (a page sent before
 * its last change and never again: QEMU < 9.0 under TCG, see
 * ../shared/reference/ram-saves-and-newer-stacks.md) comes back with an
 * older stamp there, and the guest says so on its console, one line a page:
 *
 *   VSBED MEM LOST page=P expected=E found=A,B,C   (stamps in hex)
 *
 * then takes the page as it is (stamps it s), so one loss is one line. This
 * is how QEMU's own migration test guest checks a migrated image (a byte of
 * every page incremented in a loop, all pages one sweep apart). Progress,
 * every two seconds of the guest's clock:
 *
 *   VSBED MEM sweep=S lost=L
 *
 * Between sweeps it sleeps MS milliseconds (default 10), so the disk oracle
 * keeps most of the one vCPU. At most MAX_LINES lost-page lines a sweep;
 * the rest are counted in `lost`.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / sizeof(uint64_t))
#define MAX_LINES 16
/* A stamp is tagged, so that a page of zeros or of another program never passes for one. */
#define TAG 0x5653424544000000ULL /* "VSBED" */
#define STAMP(s) (TAG | ((uint64_t)(s) & 0xffffffULL))

static void say(const char *line) {
	size_t n = strlen(line);
	while (n > 0) {
		ssize_t w = write(1, line, n);
		if (w <= 0) return;
		line += w;
		n -= (size_t)w;
	}
}

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
	/* One argument, as on the kernel command line: N or N:MS. */
	char *rest = NULL;
	long mib = argc > 1 ? strtol(argv[1], &rest, 10) : 16;
	long pause_ms = rest != NULL && *rest == ':' ? strtol(rest + 1, NULL, 10) : 10;
	char line[256];
	if (mib <= 0) mib = 16;
	if (pause_ms < 0) pause_ms = 10;
	size_t pages = (size_t)mib * 1024 * 1024 / PAGE;
	volatile uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (mem == MAP_FAILED) {
		say("VSBED MEM failed: mmap\n");
		return 1;
	}
	/* Never swapped or moved out from under the check (the guest has no swap; this makes sure). */
	mlock((void *)mem, pages * PAGE);
	struct timespec pause = { pause_ms / 1000, (pause_ms % 1000) * 1000000L };
	uint64_t lost = 0;
	uint64_t s = 1;
	for (size_t p = 0; p < pages; p++) {
		volatile uint64_t *w = mem + p * WORDS;
		w[0] = w[WORDS / 2] = w[WORDS - 1] = STAMP(s);
	}
	snprintf(line, sizeof line, "VSBED MEM up MiB=%ld pages=%zu\n", mib, pages);
	say(line);
	double last = now();
	for (;;) {
		s++;
		int lines = 0;
		for (size_t p = 0; p < pages; p++) {
			volatile uint64_t *w = mem + p * WORDS;
			uint64_t a = w[0], b = w[WORDS / 2], c = w[WORDS - 1];
			uint64_t want = STAMP(s - 1);
			if (a != want || b != want || c != want) {
				lost++;
				if (lines++ < MAX_LINES) {
					snprintf(line, sizeof line, "VSBED MEM LOST page=%zu expected=%llx found=%llx,%llx,%llx\n", p,
					         (unsigned long long)want, (unsigned long long)a, (unsigned long long)b, (unsigned long long)c);
					say(line);
				}
			}
			w[0] = w[WORDS / 2] = w[WORDS - 1] = STAMP(s);
		}
		double t = now();
		if (t - last >= 2.0) {
			snprintf(line, sizeof line, "VSBED MEM sweep=%llu lost=%llu\n", (unsigned long long)s, (unsigned long long)lost);
			say(line);
			last = t;
		}
		if (pause_ms > 0) nanosleep(&pause, NULL);
	}
}
