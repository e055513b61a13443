#ifndef FIELDLOG_CZLIB_SHIM_H
#define FIELDLOG_CZLIB_SHIM_H
/* zlib (RFC 1950 streams): the compact batch encoding's general-purpose compression
   (spec/protocol.md §3.7). Only the one-shot compress2/uncompress2/compressBound are used:
   no stream state outlives a call, so no z_stream needs an owner. */
#include <zlib.h>
#endif
