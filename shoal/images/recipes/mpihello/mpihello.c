/* mpihello: the least a parallel container job does. MPI_Init, pass one token once around a
 * ring of all ranks (each adds one), MPI_Finalize. Every rank prints `rank=R size=S host=H`;
 * rank 0 checks the token came back as S and prints `ring passed size=S`, then one JSON line
 * with its timings for the study. Exit status 1 when the ring is broken. */
#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    double t0 = now();
    MPI_Init(&argc, &argv);
    double t_init = now();

    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    char host[256];
    if (gethostname(host, sizeof host) != 0)
        strcpy(host, "unknown");
    host[sizeof host - 1] = '\0';
    printf("rank=%d size=%d host=%s\n", rank, size, host);
    fflush(stdout);

    int token = 0;
    double t_ring0 = now();
    if (size == 1) {
        token = 1; /* a ring of one: nothing to send */
    } else if (rank == 0) {
        token = 1;
        MPI_Send(&token, 1, MPI_INT, 1, 0, MPI_COMM_WORLD);
        MPI_Recv(&token, 1, MPI_INT, size - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else {
        MPI_Recv(&token, 1, MPI_INT, rank - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        token += 1;
        MPI_Send(&token, 1, MPI_INT, (rank + 1) % size, 0, MPI_COMM_WORLD);
    }
    double t_ring = now() - t_ring0;

    int status = 0;
    if (rank == 0) {
        if (token == size) {
            printf("ring passed size=%d\n", size);
        } else {
            printf("ring FAILED size=%d token=%d\n", size, token);
            status = 1;
        }
    }
    double t_fin0 = now();
    MPI_Finalize();
    double t_end = now();
    if (rank == 0) {
        printf("{\"workload\": \"mpihello\", \"size\": %d, \"ring_passed\": %s, "
               "\"init_s\": %.6f, \"ring_s\": %.6f, \"finalize_s\": %.6f, \"total_s\": %.6f}\n",
               size, status == 0 ? "true" : "false", t_init - t0, t_ring, t_end - t_fin0,
               t_end - t0);
    }
    fflush(stdout);
    return status;
}
