// What a CUDA library must share with the CPU library it is loaded beside:
// the revision of the operators' schemas (op_schemas.cpp; bump it whenever an
// op's arguments change) and the torch release both were compiled against.
// rnnfast/_extension.py compares the two libraries' IDs (the bindings'
// build_info()["build_id"], the CUDA library's rnnfast_cuda_build_id) before
// the CUDA library registers its kernels. No torch header.
#pragma once

#ifndef RNNFAST_BUILT_WITH_TORCH
#error "RNNFAST_BUILT_WITH_TORCH (the torch version of the build) must be defined"
#endif

#define RNNFAST_SCHEMA_REVISION "2"
#define RNNFAST_BUILD_ID "schema " RNNFAST_SCHEMA_REVISION "; torch " RNNFAST_BUILT_WITH_TORCH
