// Runs a zdcflow whole-shower ONNX graph (`zdcflow export-onnx --whole-shower`) through ONNX
// Runtime's C API, as a Geant4 or O2 fast-simulation model would: N showers of incident energy
// E_MEV (or log-uniform in 1 GeV - 1 TeV for "loguniform"), noise drawn here. Writes every input
// and the output `showers` to OUTDIR as .npy (float32 or float64, as the graph), so that the same
// noise can be given to zdcflow.
//     onnx_showers GRAPH.onnx N E_MEV|loguniform OUTDIR [THREADS=2] [SEED=1]
#include <onnxruntime_c_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

static const OrtApi* api;

static void check(OrtStatus* s) {
  if (s) {
    std::fprintf(stderr, "onnxruntime: %s\n", api->GetErrorMessage(s));
    api->ReleaseStatus(s);
    std::exit(1);
  }
}

// A C-order .npy file of `count` values of `elem` bytes ('<f4' or '<f8').
static void write_npy(const std::string& path, const char* descr, const std::vector<int64_t>& shape,
                      const void* data, size_t bytes) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  std::string header = "{'descr': '" + std::string(descr) + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  const uint16_t len = header.size();
  f.write("\x93NUMPY\x01\x00", 8);
  f.write(reinterpret_cast<const char*>(&len), 2);
  f << header;
  f.write(static_cast<const char*>(data), bytes);
  if (!f) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

template <typename T>
static int run(OrtSession* session, int64_t n, double e_mev, bool loguniform, const std::string& out, uint64_t seed) {
  const ONNXTensorElementDataType elem =
      sizeof(T) == 4 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
  const char* descr = sizeof(T) == 4 ? "<f4" : "<f8";
  OrtAllocator* alloc;
  check(api->GetAllocatorWithDefaultOptions(&alloc));
  OrtMemoryInfo* mem;
  check(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mem));
  std::mt19937_64 rng(seed);
  std::normal_distribution<T> normal;
  std::uniform_real_distribution<T> uniform;
  std::uniform_real_distribution<double> exponent(3.0, 6.0);

  size_t count;
  check(api->SessionGetInputCount(session, &count));
  std::vector<std::string> names;
  std::vector<std::vector<T>> buffers(count);
  std::vector<OrtValue*> inputs;
  for (size_t i = 0; i < count; ++i) {
    char* name;
    check(api->SessionGetInputName(session, i, alloc, &name));
    names.emplace_back(name);
    check(api->AllocatorFree(alloc, name));
    OrtTypeInfo* type;
    check(api->SessionGetInputTypeInfo(session, i, &type));
    const OrtTensorTypeAndShapeInfo* info;
    check(api->CastTypeInfoToTensorInfo(type, &info));
    size_t rank;
    check(api->GetDimensionsCount(info, &rank));
    std::vector<int64_t> shape(rank);
    check(api->GetDimensions(info, shape.data(), rank));
    api->ReleaseTypeInfo(type);
    shape[0] = n;  // the symbolic batch dimension
    size_t size = 1;
    for (int64_t d : shape) size *= d;
    std::vector<T>& v = buffers[i];
    v.resize(size);
    for (T& x : v) {
      if (names[i] == "e_inc") x = loguniform ? T(std::pow(10.0, exponent(rng))) : T(e_mev);
      else if (names[i] == "noise_patterns") x = uniform(rng);
      else x = normal(rng);
    }
    OrtValue* t;
    check(api->CreateTensorWithDataAsOrtValue(mem, v.data(), size * sizeof(T), shape.data(), rank, elem, &t));
    inputs.push_back(t);
    write_npy(out + "/" + names[i] + ".npy", descr, shape, v.data(), size * sizeof(T));
  }
  std::vector<const char*> input_names;
  for (auto& s : names) input_names.push_back(s.c_str());
  const char* output_names[] = {"showers"};
  OrtValue* showers = nullptr;
  check(api->Run(session, nullptr, input_names.data(), inputs.data(), count, output_names, 1, &showers));
  OrtTensorTypeAndShapeInfo* info;
  check(api->GetTensorTypeAndShape(showers, &info));
  size_t rank;
  check(api->GetDimensionsCount(info, &rank));
  std::vector<int64_t> shape(rank);
  check(api->GetDimensions(info, shape.data(), rank));
  api->ReleaseTensorTypeAndShapeInfo(info);
  T* data;
  check(api->GetTensorMutableData(showers, reinterpret_cast<void**>(&data)));
  write_npy(out + "/showers.npy", descr, shape, data, shape[0] * shape[1] * sizeof(T));
  std::printf("%lld showers of %lld voxels -> %s/showers.npy\n", (long long)shape[0], (long long)shape[1], out.c_str());
  api->ReleaseValue(showers);
  for (OrtValue* t : inputs) api->ReleaseValue(t);
  api->ReleaseMemoryInfo(mem);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s GRAPH.onnx N E_MEV|loguniform OUTDIR [THREADS=2] [SEED=1]\n", argv[0]);
    return 2;
  }
  const int64_t n = std::atoll(argv[2]);
  const bool loguniform = std::string(argv[3]) == "loguniform";
  const double e_mev = loguniform ? 0.0 : std::atof(argv[3]);
  const int threads = argc > 5 ? std::atoi(argv[5]) : 2;
  const uint64_t seed = argc > 6 ? std::strtoull(argv[6], nullptr, 10) : 1;
  if (n < 1 || (!loguniform && !(e_mev > 0.0)) || threads < 1) {
    std::fprintf(stderr, "N must be >= 1, E_MEV > 0 (or loguniform), THREADS >= 1\n");
    return 2;
  }
  api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (!api) {
    std::fprintf(stderr, "this ONNX Runtime library is older than the headers (API %d)\n", ORT_API_VERSION);
    return 1;
  }
  OrtEnv* env;
  check(api->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "zdcflow", &env));
  OrtSessionOptions* opts;
  check(api->CreateSessionOptions(&opts));
  check(api->SetIntraOpNumThreads(opts, threads));
  check(api->SetInterOpNumThreads(opts, 1));
  check(api->SetSessionGraphOptimizationLevel(opts, ORT_ENABLE_ALL));
  OrtSession* session;
  check(api->CreateSession(env, argv[1], opts, &session));
  OrtTypeInfo* type;
  check(api->SessionGetInputTypeInfo(session, 0, &type));
  const OrtTensorTypeAndShapeInfo* info;
  check(api->CastTypeInfoToTensorInfo(type, &info));
  ONNXTensorElementDataType elem;
  check(api->GetTensorElementType(info, &elem));
  api->ReleaseTypeInfo(type);
  const int rc = elem == ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE ? run<double>(session, n, e_mev, loguniform, argv[4], seed)
                                                              : run<float>(session, n, e_mev, loguniform, argv[4], seed);
  api->ReleaseSession(session);
  api->ReleaseSessionOptions(opts);
  api->ReleaseEnv(env);
  return rc;
}
