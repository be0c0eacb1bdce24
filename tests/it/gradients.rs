//! Finite-difference proof of every layer's gradients as the network uses them: Conv1d with
//! TensorFlow 'same' (asymmetric) padding, LeakyReLU(0.2), MaxPool1d(8, stride 2), global max
//! over time, Linear, and the weighted BCE-with-logits loss — then a whole small chain.
//! Computed in f64 so that central differences are accurate to ~1e-7.
//! (candle 0.11 was found to get conv1d gradients wrong on CPU; this is the guard against that
//! class of bug in whichever framework trains the model.)

use affectgate::learn::model::{same_padding, weighted_bce, LEAKY_SLOPE};
use burn::module::{Param, ParamId};
use burn::nn::conv::Conv1dConfig;
use burn::nn::pool::MaxPool1dConfig;
use burn::nn::{LinearConfig, PaddingConfig1d};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{DType, Device, Tensor, TensorData};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A parameter wrapping a (reshaped) leaf: gradients flow back to the f64 leaf.
fn param<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::initialized(ParamId::new(), t)
}

fn rand_vec(n: usize, rng: &mut SmallRng) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn t<const D: usize>(v: &[f64], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), (device, DType::F64))
}

fn vals<const D: usize>(x: Tensor<D>) -> Vec<f64> {
    x.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

/// A scalar function of several parameter vectors, evaluated with burn on `device`;
/// returns the loss tensor.
type LossFn = dyn Fn(&[Tensor<1>], &Device) -> Tensor<1>;

/// Compare autodiff gradients with central differences on every coordinate (or a sample of
/// `max_coords` per parameter). Returns the worst relative error.
fn check(name: &str, params: &[Vec<f64>], f: &LossFn, max_coords: usize) -> f64 {
    let ad = Device::flex().autodiff();
    let plain = Device::flex();
    let leaves: Vec<Tensor<1>> = params
        .iter()
        .map(|p| t(p, [p.len()], &ad).require_grad())
        .collect();
    let loss = f(&leaves, &ad);
    assert_eq!(loss.dtype(), DType::F64, "{name}: test must run in f64");
    let grads = loss.backward();
    let eval = |ps: &[Vec<f64>]| -> f64 {
        let ts: Vec<Tensor<1>> = ps.iter().map(|p| t(p, [p.len()], &plain)).collect();
        vals(f(&ts, &plain))[0]
    };
    let eps = 1e-6;
    let mut worst = 0.0f64;
    for (pi, leaf) in leaves.iter().enumerate() {
        let g = vals(leaf.grad(&grads).expect("gradient for every leaf"));
        let n = params[pi].len();
        let step = (n / max_coords).max(1);
        for j in (0..n).step_by(step) {
            let mut plus = params.to_vec();
            plus[pi][j] += eps;
            let mut minus = params.to_vec();
            minus[pi][j] -= eps;
            let num = (eval(&plus) - eval(&minus)) / (2.0 * eps);
            let err = (num - g[j]).abs() / (1e-6 + num.abs().max(g[j].abs()).max(1e-3));
            assert!(
                err < 1e-4,
                "{name}: param {pi} coord {j}: autodiff {} vs finite difference {num}",
                g[j]
            );
            worst = worst.max(err);
        }
    }
    eprintln!("{name}: worst relative error {worst:.2e}");
    worst
}

fn projection(n: usize, seed: u64) -> Vec<f64> {
    rand_vec(n, &mut SmallRng::seed_from_u64(seed))
}

#[test]
fn conv1d_same_padding_even_kernel() {
    let mut rng = SmallRng::seed_from_u64(1);
    let (b, ci, co, k, l) = (2, 3, 4, 8, 40);
    let (pl, pr) = same_padding(k);
    assert_eq!((pl, pr), (3, 4));
    let r = projection(b * co * l, 2);
    let f = move |p: &[Tensor<1>], d: &Device| {
        let mut conv = Conv1dConfig::new(ci, co, k)
            .with_padding(PaddingConfig1d::Explicit(pl, pr))
            .init(d);
        conv.weight = param(p[1].clone().reshape([co, ci, k]));
        conv.bias = Some(param(p[2].clone()));
        let y = conv.forward(p[0].clone().reshape([b, ci, l]));
        assert_eq!(y.dims(), [b, co, l], "'same' keeps the length");
        (y * t(&r, [b, co, l], d)).sum()
    };
    check(
        "conv1d",
        &[
            rand_vec(b * ci * l, &mut rng),
            rand_vec(co * ci * k, &mut rng),
            rand_vec(co, &mut rng),
        ],
        &f,
        400,
    );
}

#[test]
fn leaky_relu_and_max_pool() {
    let mut rng = SmallRng::seed_from_u64(3);
    let (b, c, l) = (2, 3, 41);
    let out_len = (l - 8) / 2 + 1;
    let r = projection(b * c * out_len, 4);
    let f = move |p: &[Tensor<1>], d: &Device| {
        let pool = MaxPool1dConfig::new(8).with_stride(2).init();
        let y = pool.forward(leaky_relu(p[0].clone().reshape([b, c, l]), LEAKY_SLOPE));
        assert_eq!(y.dims(), [b, c, out_len]);
        (y * t(&r, [b, c, out_len], d)).sum()
    };
    check(
        "leaky_relu+max_pool1d",
        &[rand_vec(b * c * l, &mut rng)],
        &f,
        1000,
    );
}

#[test]
fn global_max_and_linear() {
    let mut rng = SmallRng::seed_from_u64(5);
    let (b, c, l, o) = (3, 6, 17, 4);
    let r = projection(b * o, 6);
    let f = move |p: &[Tensor<1>], d: &Device| {
        let mut lin = LinearConfig::new(c, o).init(d);
        lin.weight = param(p[1].clone().reshape([c, o]));
        lin.bias = Some(param(p[2].clone()));
        let pooled = p[0].clone().reshape([b, c, l]).max_dim(2).reshape([b, c]);
        let y = lin.forward(pooled);
        (y * t(&r, [b, o], d)).sum()
    };
    check(
        "global_max+linear",
        &[
            rand_vec(b * c * l, &mut rng),
            rand_vec(c * o, &mut rng),
            rand_vec(o, &mut rng),
        ],
        &f,
        1000,
    );
}

#[test]
fn weighted_bce_with_logits() {
    let mut rng = SmallRng::seed_from_u64(7);
    let (n, h) = (5, 7);
    let y: Vec<f64> = (0..n * h)
        .map(|i| ((i * 7 + 3) % 3 == 0) as u8 as f64)
        .collect();
    let sw: Vec<f64> = (0..n * h).map(|i| 0.5 + (i % 4) as f64 * 0.25).collect();
    let hw = [0.195f32, 0.195, 0.195, 0.0125, 0.0125, 0.195, 0.195];
    let logits: Vec<f64> = rand_vec(n * h, &mut rng).iter().map(|v| v * 6.0).collect();
    let sw_check = sw.clone();
    let f = move |p: &[Tensor<1>], d: &Device| {
        weighted_bce(
            p[0].clone().reshape([n, h]),
            t(&y, [n, h], d),
            &hw,
            Some(t(&sw, [n, h], d)),
        )
    };
    // value check against the textbook formula
    let plain = Device::flex();
    let v = vals(f(&[t(&logits, [n * h], &plain)], &plain))[0];
    let mut expect = 0.0;
    for i in 0..n {
        for j in 0..h {
            let z = logits[i * h + j];
            let p = 1.0 / (1.0 + (-z).exp());
            let yy = if (((i * h + j) * 7 + 3) % 3) == 0 {
                1.0
            } else {
                0.0
            };
            let bce = -(yy * p.ln() + (1.0 - yy) * (1.0 - p).ln());
            expect += hw[j] as f64 * sw_check[i * h + j] * bce;
        }
    }
    expect /= n as f64;
    assert!(
        (v - expect).abs() < 1e-6 * expect.abs().max(1.0),
        "bce {v} vs {expect}"
    );
    check("weighted_bce", &[logits], &f, 100);
}

/// The composition the encoder uses, end to end on a short signal, with every parameter.
#[test]
fn small_encoder_chain() {
    let mut rng = SmallRng::seed_from_u64(9);
    let (b, l) = (2, 64);
    let specs = [(1usize, 3usize, 8usize), (3, 4, 4)];
    let mut params = vec![rand_vec(b * l, &mut rng)];
    for &(i, o, k) in &specs {
        params.push(rand_vec(o * i * k, &mut rng));
        params.push(rand_vec(o, &mut rng));
    }
    let lin_in = specs[1].1;
    params.push(rand_vec(lin_in, &mut rng));
    params.push(rand_vec(1, &mut rng));
    let f = move |p: &[Tensor<1>], d: &Device| {
        let mut x = p[0].clone().reshape([b, 1, l]);
        let pool = MaxPool1dConfig::new(8).with_stride(2).init();
        for (li, &(i, o, k)) in specs.iter().enumerate() {
            let (pl, pr) = same_padding(k);
            let mut conv = Conv1dConfig::new(i, o, k)
                .with_padding(PaddingConfig1d::Explicit(pl, pr))
                .init(d);
            conv.weight = param(p[1 + 2 * li].clone().reshape([o, i, k]));
            conv.bias = Some(param(p[2 + 2 * li].clone()));
            x = leaky_relu(conv.forward(x), LEAKY_SLOPE);
            if li == 0 {
                x = pool.forward(x);
            }
        }
        let [bb, c, _] = x.dims();
        let emb = x.max_dim(2).reshape([bb, c]);
        let mut lin = LinearConfig::new(lin_in, 1).init(d);
        lin.weight = param(p[5].clone().reshape([lin_in, 1]));
        lin.bias = Some(param(p[6].clone()));
        let logits = lin.forward(emb);
        weighted_bce(logits, t(&[1.0, 0.0], [b, 1], d), &[1.0], None)
    };
    check("encoder chain", &params, &f, 200);
}
