// LabClockShift: a preload library for the outage lab's clock scenario (no API to call).
//
// Started with LD_PRELOAD=libLabClockShift.so and FIELDLOG_LAB_CLOCK_OFFSET_FILE=<file>, a
// program reads a wall clock (CLOCK_REALTIME) moved by the signed number of seconds in the
// file ("+0", "-3600"), which the lab rewrites while the program runs. Nothing of Fieldlog
// reads that variable: the clock jump comes from outside, as a real one would.
#ifndef LAB_CLOCK_SHIFT_H
#define LAB_CLOCK_SHIFT_H
#endif
