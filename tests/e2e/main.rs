mod api_errors;
mod audit;
mod connector;
mod flow;
mod harness;
mod poison;
mod rejections;
mod store;
