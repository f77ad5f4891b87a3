! heat_fortran: a Fortran MPI program for the tests of libcrest-mpi-auto (the PMPI wrapper) with
! Open MPI's Fortran bindings. The same deterministic Jacobi solve of the steady 2-D heat
! equation as examples/mpi/heat.c, split over the ranks by rows:
!
!   mpirun -np P heat-fortran [-n N] [-s SWEEPS] [-r REPORT_EVERY] [-w MICROSECONDS]
!
! Built twice from this file: with `use mpi` (crest-heat-fortran: the calls go to mpi_barrier_,
! mpi_allreduce_ of libmpi_mpifh) and, with HEAT_F08 defined, with `use mpi_f08`
! (crest-heat-fortran-f08: mpi_barrier_f08_, mpi_allreduce_f08_ of libmpi_usempif08). Each
! sweep exchanges the block's edge rows with MPI_Sendrecv, updates the block, sums the change
! with MPI_ALLREDUCE; every 10 sweeps the ranks meet in MPI_BARRIER. -w sleeps that long after
! each sweep. Rank 0 prints
!
!   heat: N x N grid (Fortran, BINDING), SWEEPS sweeps, P ranks
!   sweep     S/SWEEPS  mean change C          (every REPORT_EVERY sweeps)
!   answer: <sum of the final grid> <sum weighted by position>
!
! Every point is computed by the same expression from the same neighbours whatever the number of
! ranks, and rank 0 sums the gathered grid in row order: the answer depends only on N and
! SWEEPS, so a run checkpointed, killed and restored gives that of an uninterrupted one.
program heat_fortran
#ifdef HEAT_F08
  use mpi_f08
#else
  use mpi
#endif
  use, intrinsic :: iso_c_binding, only: c_int
  implicit none
  interface
    function usleep(us) bind(C, name="usleep")
      import :: c_int
      integer(c_int), value :: us
      integer(c_int) :: usleep
    end function usleep
  end interface
#ifdef HEAT_F08
  character(len=*), parameter :: binding = "mpi_f08"
#else
  character(len=*), parameter :: binding = "mpi"
#endif
  integer, parameter :: dp = kind(1.0d0)
  real(dp), parameter :: pi = 3.14159265358979323846_dp
  integer :: n = 200, sweeps = 1000, report = 50, pause_us = 0
  integer :: ierr, rank, nranks, up, down, row0, row1, rows, i, j, s, r, k, orow0, orow1
  integer :: i0, i1, cur, nxt
  real(dp), allocatable :: u(:, :, :), all(:, :)
  real(dp) :: change, total, sum_plain, sum_weighted
  character(len=32) :: arg, val

  call MPI_Init(ierr)
  call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
  call MPI_Comm_size(MPI_COMM_WORLD, nranks, ierr)
  k = 1
  do while (k + 1 <= command_argument_count())
    call get_command_argument(k, arg)
    call get_command_argument(k + 1, val)
    select case (arg)
    case ("-n")
      read (val, *) n
    case ("-s")
      read (val, *) sweeps
    case ("-r")
      read (val, *) report
    case ("-w")
      read (val, *) pause_us
    case default
      if (rank == 0) write (0, '(a)') "usage: heat-fortran [-n N] [-s SWEEPS] [-r REPORT_EVERY] [-w US]"
      call MPI_Abort(MPI_COMM_WORLD, 2, ierr)
    end select
    k = k + 2
  end do
  if (n < 2 * nranks .or. sweeps < 1 .or. report < 1 .or. pause_us < 0) then
    if (rank == 0) write (0, '(a)') "heat-fortran: bad arguments (or too many ranks for the grid)"
    call MPI_Abort(MPI_COMM_WORLD, 2, ierr)
  end if

  ! This rank's rows: global rows row0..row1 (0-based), held at local rows 1..rows of u(:, :, g),
  ! with the neighbours' edge rows at 0 and rows + 1; columns 0..n-1.
  row0 = int(int(n, 8) * rank / nranks)
  row1 = int(int(n, 8) * (rank + 1) / nranks) - 1
  rows = row1 - row0 + 1
  up = rank - 1
  down = rank + 1
  if (rank == 0) up = MPI_PROC_NULL
  if (rank == nranks - 1) down = MPI_PROC_NULL
  allocate (u(0:n - 1, 0:rows + 1, 0:1))
  u = 0
  do i = 1, rows
    if (row0 + i - 1 == 0) then
      do j = 0, n - 1
        u(j, i, :) = 100.0_dp * sin(pi * real(j, dp) / real(n - 1, dp))
      end do
    end if
  end do
  ! The interior: the global boundary never changes.
  i0 = 1
  if (row0 == 0) i0 = 2
  i1 = rows
  if (row1 == n - 1) i1 = rows - 1

  if (rank == 0) then
    write (6, '(a,i0,a,i0,a,a,a,i0,a,i0,a)') "heat: ", n, " x ", n, " grid (Fortran, ", binding, &
      "), ", sweeps, " sweeps, ", nranks, " ranks"
    flush (6)
  end if
  do s = 0, sweeps - 1
    cur = mod(s, 2)
    nxt = 1 - cur
    call MPI_Sendrecv(u(0, 1, cur), n, MPI_DOUBLE_PRECISION, up, 0, &
                      u(0, rows + 1, cur), n, MPI_DOUBLE_PRECISION, down, 0, &
                      MPI_COMM_WORLD, MPI_STATUS_IGNORE, ierr)
    call MPI_Sendrecv(u(0, rows, cur), n, MPI_DOUBLE_PRECISION, down, 1, &
                      u(0, 0, cur), n, MPI_DOUBLE_PRECISION, up, 1, &
                      MPI_COMM_WORLD, MPI_STATUS_IGNORE, ierr)
    change = 0
    do i = i0, i1
      do j = 1, n - 2
        u(j, i, nxt) = 0.25_dp * (u(j, i - 1, cur) + u(j, i + 1, cur) + u(j - 1, i, cur) + u(j + 1, i, cur))
        change = change + abs(u(j, i, nxt) - u(j, i, cur))
      end do
    end do
    call MPI_Allreduce(change, total, 1, MPI_DOUBLE_PRECISION, MPI_SUM, MPI_COMM_WORLD, ierr)
    if (mod(s + 1, 10) == 0) call MPI_Barrier(MPI_COMM_WORLD, ierr)
    if (rank == 0 .and. (mod(s + 1, report) == 0 .or. s + 1 == sweeps)) then
      write (6, '(a,i5,a,i0,a,es14.6)') "sweep ", s + 1, "/", sweeps, "  mean change ", &
        total / real(n - 2, dp)**2
      flush (6)
    end if
    if (pause_us > 0) k = usleep(int(pause_us, c_int))
  end do

  ! Rank 0 gathers the grid in row order and sums it.
  cur = mod(sweeps, 2)
  if (rank /= 0) then
    call MPI_Send(u(0, 1, cur), n * rows, MPI_DOUBLE_PRECISION, 0, 9, MPI_COMM_WORLD, ierr)
  else
    allocate (all(0:n - 1, 0:n - 1))
    all(:, 0:rows - 1) = u(:, 1:rows, cur)
    do r = 1, nranks - 1
      orow0 = int(int(n, 8) * r / nranks)
      orow1 = int(int(n, 8) * (r + 1) / nranks) - 1
      call MPI_Recv(all(0, orow0), n * (orow1 - orow0 + 1), MPI_DOUBLE_PRECISION, r, 9, &
                    MPI_COMM_WORLD, MPI_STATUS_IGNORE, ierr)
    end do
    sum_plain = 0
    sum_weighted = 0
    do i = 0, n - 1
      do j = 0, n - 1
        sum_plain = sum_plain + all(j, i)
        sum_weighted = sum_weighted + all(j, i) * real(mod(i * n + j, 7) + 1, dp)
      end do
    end do
    write (6, '(a,es24.16,1x,es24.16)') "answer: ", sum_plain, sum_weighted
    flush (6)
  end if
  call MPI_Finalize(ierr)
end program heat_fortran
