// The rational-quadratic spline on the GPU: the same formulas as `Knots` in spline/kernel.rs (nflows
// 0.14's `unconstrained_rational_quadratic_spline` with linear tails), one thread per element.
// Compiled at run time with NVRTC; instantiated for float and double.

#define MAXK 32

__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return exp(x); }
__device__ __forceinline__ float lg(float x) { return logf(x); }
__device__ __forceinline__ double lg(double x) { return log(x); }
__device__ __forceinline__ float sq(float x) { return sqrtf(x); }
__device__ __forceinline__ double sq(double x) { return sqrt(x); }

template <typename F> struct Consts {
    int k;
    F left, span, min_w, min_h, min_d, scale_w, scale_h, boundary, eps;
};

template <typename F> __device__ F log1p_kahan(F e) {
    F u = (F)1 + e;
    if (u == (F)1) return e;
    return lg(u) * e / (u - (F)1);
}

template <typename F> __device__ F softplus(F x) { return x > (F)20 ? x : log1p_kahan(ex(x)); }
template <typename F> __device__ F softplus_grad(F x) { return x > (F)20 ? (F)1 : (F)1 / ((F)1 + ex(-x)); }

template <typename F> __device__ void softmax(const F* u, F* out, int k) {
    F m = u[0];
    for (int i = 1; i < k; i++) m = u[i] > m ? u[i] : m;
    F s = 0;
    for (int i = 0; i < k; i++) { out[i] = ex(u[i] - m); s += out[i]; }
    F inv = (F)1 / s;
    for (int i = 0; i < k; i++) out[i] *= inv;
}

template <typename F> __device__ void cumulate(const F* soft, F mn, F scale, const Consts<F>& c, F* out) {
    F acc = 0;
    out[0] = c.left;
    for (int j = 0; j < c.k; j++) { acc += mn + scale * soft[j]; out[j + 1] = c.span * acc + c.left; }
    out[c.k] = c.left + c.span;
}

template <typename F> __device__ int search(const F* knots, int k, F v, F eps) {
    int count = 0;
    for (int j = 0; j <= k; j++) {
        F loc = j == k ? knots[j] + eps : knots[j];
        if (v >= loc) count++;
    }
    int b = count - 1;
    if (b < 0) b = 0;
    if (b > k - 1) b = k - 1;
    return b;
}

template <typename F> __device__ F deriv(const Consts<F>& c, const F* p, int j) {
    return (j == 0 || j == c.k) ? c.boundary : c.min_d + softplus(p[2 * c.k + j - 1]);
}

template <typename F> struct Bin { int k; F theta, width, height, delta, d0, d1; };

template <typename F> __device__ F log_derivative(const Bin<F>& b) {
    F t = b.theta, tomt = t * ((F)1 - t);
    F den = b.delta + (b.d0 + b.d1 - (F)2 * b.delta) * tomt;
    F num = b.delta * b.delta * (b.d1 * t * t + (F)2 * b.delta * tomt + b.d0 * ((F)1 - t) * ((F)1 - t));
    return lg(num) - (F)2 * lg(den);
}

template <typename F> struct Knots { F sw[MAXK], sh[MAXK], cw[MAXK + 1], ch[MAXK + 1]; };

template <typename F> __device__ void build(const Consts<F>& c, const F* p, Knots<F>& kn) {
    softmax(p, kn.sw, c.k);
    softmax(p + c.k, kn.sh, c.k);
    cumulate(kn.sw, c.min_w, c.scale_w, c, kn.cw);
    cumulate(kn.sh, c.min_h, c.scale_h, c, kn.ch);
}

template <typename F> __device__ Bin<F> forward(const Consts<F>& c, const F* p, const Knots<F>& kn, F x, F* y, F* l) {
    int k = search(kn.cw, c.k, x, c.eps);
    Bin<F> b;
    b.k = k;
    b.width = kn.cw[k + 1] - kn.cw[k];
    b.height = kn.ch[k + 1] - kn.ch[k];
    b.delta = b.height / b.width;
    b.d0 = deriv(c, p, k);
    b.d1 = deriv(c, p, k + 1);
    b.theta = (x - kn.cw[k]) / b.width;
    F t = b.theta, tomt = t * ((F)1 - t);
    F num = b.height * (b.delta * t * t + b.d0 * tomt);
    F den = b.delta + (b.d0 + b.d1 - (F)2 * b.delta) * tomt;
    *y = kn.ch[k] + num / den;
    *l = log_derivative(b);
    return b;
}

template <typename F> __device__ Bin<F> inverse(const Consts<F>& c, const F* p, const Knots<F>& kn, F y, F* x, F* l) {
    int k = search(kn.ch, c.k, y, c.eps);
    Bin<F> b;
    b.k = k;
    b.width = kn.cw[k + 1] - kn.cw[k];
    b.height = kn.ch[k + 1] - kn.ch[k];
    b.delta = b.height / b.width;
    b.d0 = deriv(c, p, k);
    b.d1 = deriv(c, p, k + 1);
    F dy = y - kn.ch[k];
    F s = b.d0 + b.d1 - (F)2 * b.delta;
    F a = dy * s + b.height * (b.delta - b.d0);
    F bb = b.height * b.d0 - dy * s;
    F cc = -b.delta * dy;
    F disc = bb * bb - (F)4 * a * cc;
    if (disc < (F)0) disc = 0;
    F root = ((F)2 * cc) / (-bb - sq(disc));
    *x = root * b.width + kn.cw[k];
    b.theta = root;
    *l = -log_derivative(b);
    return b;
}

// Accumulates the gradient on knots k, k+1 through the cumulative softmax into raw parameters.
template <typename F> __device__ void accumulate_softmax(const F* soft, int kk, int k, F g0, F g1, F factor, F* grad) {
    F gs[MAXK];
    for (int i = 0; i < kk; i++) gs[i] = 0;
    F gk[2] = {g0, g1};
    for (int o = 0; o < 2; o++) {
        int j = k + o;
        if (j >= 1 && j < kk)
            for (int i = 0; i < j; i++) gs[i] += factor * gk[o];
    }
    F dot = 0;
    for (int i = 0; i < kk; i++) dot += soft[i] * gs[i];
    for (int i = 0; i < kk; i++) grad[i] += soft[i] * (gs[i] - dot);
}

// d(gy·y + gl·log|dy/dx|) with respect to the raw parameters (accumulated into grad) and x (returned).
template <typename F> __device__ F backprop(const Consts<F>& c, const F* p, const Knots<F>& kn, const Bin<F>& b, F gy, F gl, F* grad) {
    F t = b.theta, one = 1, two = 2, tomt = t * (one - t);
    F s = b.d0 + b.d1 - two * b.delta;
    F num = b.delta * t * t + b.d0 * tomt;
    F den = b.delta + s * tomt;
    F r = num / den;
    F n_theta = two * b.delta * t + b.d0 * (one - two * t);
    F d_theta = s * (one - two * t);
    F d_delta = one - two * tomt;
    F gnum = b.d1 * t * t + two * b.delta * tomt + b.d0 * (one - t) * (one - t);
    F g_th = two * b.d1 * t + two * b.delta * (one - two * t) - two * b.d0 * (one - t);
    F hod = b.height / den;
    F y_theta = hod * (n_theta - r * d_theta), y_delta = hod * (t * t - r * d_delta);
    F y_d0 = hod * tomt * (one - r), y_d1 = -hod * r * tomt;
    F l_theta = g_th / gnum - two * d_theta / den;
    F l_delta = two / b.delta + two * tomt / gnum - two * d_delta / den;
    F l_d0 = (one - t) * (one - t) / gnum - two * tomt / den;
    F l_d1 = t * t / gnum - two * tomt / den;
    F g_theta = gy * y_theta + gl * l_theta;
    F g_delta = gy * y_delta + gl * l_delta;
    F g_d0 = gy * y_d0 + gl * l_d0;
    F g_d1 = gy * y_d1 + gl * l_d1;
    F g_x = g_theta / b.width;
    F g_w = -(g_theta * t + g_delta * b.delta) / b.width;
    F g_h = gy * r + g_delta / b.width;
    int kk = c.k, k = b.k;
    accumulate_softmax(kn.sw, kk, k, -g_x - g_w, g_w, c.span * c.scale_w, grad);
    accumulate_softmax(kn.sh, kk, k, gy - g_h, g_h, c.span * c.scale_h, grad + kk);
    F gd[2] = {g_d0, g_d1};
    for (int o = 0; o < 2; o++) {
        int j = k + o;
        if (j >= 1 && j < kk) {
            int idx = 2 * kk + j - 1;
            grad[idx] += gd[o] * softplus_grad(p[idx]);
        }
    }
    return g_x;
}

template <typename F> __device__ bool inside(const Consts<F>& c, F v) { return v >= c.left && v <= c.left + c.span; }

template <typename F> __device__ void rqs_forward(const Consts<F> c, int inverse_dir, int n_el, int m, const F* x, const F* p, F* out) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n_el) return;
    F v = x[e], y, l;
    if (!inside(c, v)) { out[e] = v; out[n_el + e] = 0; return; }
    const F* pe = p + (long)e * m;
    Knots<F> kn;
    build(c, pe, kn);
    if (inverse_dir) inverse(c, pe, kn, v, &y, &l); else forward(c, pe, kn, v, &y, &l);
    out[e] = y;
    out[n_el + e] = l;
}

// out: [raw-parameter gradients (n_el·m) | input gradients (n_el)]
template <typename F> __device__ void rqs_backward(const Consts<F> c, int inverse_dir, int n_el, int m, const F* x, const F* p, const F* g, F* out) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n_el) return;
    F* gp = out + (long)e * m;
    for (int i = 0; i < m; i++) gp[i] = 0;
    F v = x[e], gy = g[e], gl = g[n_el + e];
    if (!inside(c, v)) { out[(long)n_el * m + e] = gy; return; }
    const F* pe = p + (long)e * m;
    Knots<F> kn;
    build(c, pe, kn);
    F y, l, gx;
    if (!inverse_dir) {
        Bin<F> b = forward(c, pe, kn, v, &y, &l);
        gx = backprop(c, pe, kn, b, gy, gl, gp);
    } else {
        Bin<F> b = inverse(c, pe, kn, v, &y, &l);
        F f_x = ex(-l);
        F t = b.theta, one = 1, two = 2, tomt = t * (one - t);
        F s = b.d0 + b.d1 - two * b.delta;
        F den = b.delta + s * tomt;
        F gnum = b.d1 * t * t + two * b.delta * tomt + b.d0 * (one - t) * (one - t);
        F g_th = two * b.d1 * t + two * b.delta * (one - two * t) - two * b.d0 * (one - t);
        F l_x = (g_th / gnum - two * s * (one - two * t) / den) / b.width;
        F cy = (-gy + gl * l_x) / f_x;
        backprop(c, pe, kn, b, cy, -gl, gp);
        gx = -cy;
    }
    out[(long)n_el * m + e] = gx;
}

#define CONSTS(F) int k, F left, F span, F min_w, F min_h, F min_d, F scale_w, F scale_h, F boundary, F eps
#define MAKE(F) Consts<F> c = {k, left, span, min_w, min_h, min_d, scale_w, scale_h, boundary, eps}

extern "C" __global__ void rqs_forward_f32(CONSTS(float), int inverse_dir, int n_el, int m, const float* x, const float* p, float* out) {
    MAKE(float);
    rqs_forward(c, inverse_dir, n_el, m, x, p, out);
}
extern "C" __global__ void rqs_forward_f64(CONSTS(double), int inverse_dir, int n_el, int m, const double* x, const double* p, double* out) {
    MAKE(double);
    rqs_forward(c, inverse_dir, n_el, m, x, p, out);
}
extern "C" __global__ void rqs_backward_f32(CONSTS(float), int inverse_dir, int n_el, int m, const float* x, const float* p, const float* g, float* out) {
    MAKE(float);
    rqs_backward(c, inverse_dir, n_el, m, x, p, g, out);
}
extern "C" __global__ void rqs_backward_f64(CONSTS(double), int inverse_dir, int n_el, int m, const double* x, const double* p, const double* g, double* out) {
    MAKE(double);
    rqs_backward(c, inverse_dir, n_el, m, x, p, g, out);
}
