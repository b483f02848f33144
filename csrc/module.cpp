// The Python module simclr_fast._C. Loading it registers the ops of ntxent.cpp and augment.cpp with torch
// (static registration); the module itself only reports how it was built.
//
// SIMCLR_FAST_BUILD_INFO below is also read *without* loading the library: simclr_fast/_extension.py
// scans the .so file for it and refuses to load a library built for another torch.
#include <Python.h>

#include <exception>  // also makes libstdc++ define _GLIBCXX_USE_CXX11_ABI

#include <torch/headeronly/version.h>

#define SIMCLR_FAST_STR2(x) #x
#define SIMCLR_FAST_STR(x) SIMCLR_FAST_STR2(x)

#ifndef _GLIBCXX_USE_CXX11_ABI
#define _GLIBCXX_USE_CXX11_ABI 0
#endif

extern "C" __attribute__((used)) const char simclr_fast_build_info[] =
    "SIMCLR_FAST_BUILD_INFO{torch=" SIMCLR_FAST_STR(TORCH_VERSION_MAJOR) "." SIMCLR_FAST_STR(
        TORCH_VERSION_MINOR) "." SIMCLR_FAST_STR(TORCH_VERSION_PATCH) ";cxx11abi=" SIMCLR_FAST_STR(_GLIBCXX_USE_CXX11_ABI) "}";

const char* simclr_fast_cpu_isa();  // ntxent.cpp

namespace {

PyObject* build_info(PyObject*, PyObject*) { return PyUnicode_FromString(simclr_fast_build_info); }

PyObject* cpu_isa(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(simclr_fast_cpu_isa());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "The torch version and C++ ABI this extension was built for."},
    {"cpu_isa", cpu_isa, METH_NOARGS, "Which elementwise kernels run on this CPU: 'avx2' or 'generic'."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "simclr_fast._C",
                          "Fused NT-Xent and augmentation CPU kernels (ops registered as torch.ops.simclr_fast.*).", -1,
                          methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module_def); }
